"""Generators for single models and for FusionRoute (and its routing-only ablation)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fusionroute.generation import Completion, MethodContext, register_method
from fusionroute.router import RouterModel
from fusionroute.vocab import SharedVocabulary


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids exactly as training saw prompts: BOS (when the tokenizer has one) + text."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def without_eos(ids: list[int], stop_ids: Sequence[int]) -> int:
    """How many of the emitted `ids` are content: the decoders return the final end id too."""
    return len(ids) - 1 if ids and ids[-1] in stop_ids else len(ids)


@dataclass
class SingleModelGenerator:
    """Greedy decoding with one causal LM (an expert, a merge, the fine-tuned model)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    vocab: SharedVocabulary

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Completion]:
        from fusionroute.decoding import greedy_generate

        stops = self.vocab.stop_ids
        outputs = greedy_generate(self.model, encode_prompts(self.tokenizer, prompts), max_new_tokens,
                                  stops, self.tokenizer.pad_token_id, vocab_size=self.vocab.size)
        # one forward per emitted token (the end-of-turn step included)
        return [Completion(decode(self.tokenizer, ids), list(ids[: without_eos(ids, stops)]), forwards=len(ids))
                for ids in outputs]


@register_method("single")
def build_single(ctx: MethodContext) -> SingleModelGenerator:
    from fusionroute.experts import ExpertPool

    pool = ExpertPool.load(["model"], [ctx.inputs["model"]], ctx.tokenizer, ctx.dtype, ctx.device)
    return SingleModelGenerator(pool.models[0], pool.tokenizer, pool.vocab)


@dataclass
class FusionRouteGenerator:
    """Eq. 1 decoding: router log-probs + the selected expert's log-probs (or, with
    `use_complementary=False`, the routing-only ablation of Table 2)."""

    router: RouterModel
    experts: list[PreTrainedModel]
    tokenizer: PreTrainedTokenizerBase
    vocab: SharedVocabulary
    use_complementary: bool = True

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Completion]:
        from fusionroute.decoding import fused_generate

        stops = self.vocab.stop_ids
        outputs = fused_generate(self.router, self.experts, encode_prompts(self.tokenizer, prompts), max_new_tokens,
                                 stops, self.tokenizer.pad_token_id, use_complementary=self.use_complementary,
                                 vocab_size=self.vocab.size)
        completions = []
        for out in outputs:
            n = without_eos(out.token_ids, stops)
            completions.append(Completion(decode(self.tokenizer, out.token_ids), list(out.token_ids[:n]),
                                          list(out.expert_ids[:n]), out.forwards))
        return completions


@register_method("fusionroute")
def build_fusionroute(ctx: MethodContext) -> FusionRouteGenerator:
    from fusionroute.experts import ExpertPool
    from fusionroute.models import DTYPES

    router = RouterModel.from_pretrained(ctx.inputs["router"], dtype=DTYPES[ctx.dtype]).to(ctx.device).eval()
    pool = ExpertPool.load(router.config.expert_names, ctx.inputs["experts"], ctx.tokenizer, ctx.dtype, ctx.device,
                           extra_models={"router": router.lm})
    return FusionRouteGenerator(router, pool.models, pool.tokenizer, pool.vocab,
                                bool(ctx.params.get("use_complementary", True)))

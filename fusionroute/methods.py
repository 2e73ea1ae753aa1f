"""Generators for single models and for FusionRoute (and its routing-only ablation)."""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fusionroute.generation import Completion, MethodContext, register_method
from fusionroute.models import load_causal_lm, load_tokenizer
from fusionroute.router import RouterModel


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids exactly as training saw prompts: BOS (when the tokenizer has one) + text."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def without_eos(ids: list[int], eos_token_id: int | None) -> int:
    """How many of the emitted `ids` are content: the decoders return a final EOS too."""
    return len(ids) - 1 if ids and ids[-1] == eos_token_id else len(ids)


@dataclass
class SingleModelGenerator:
    """Greedy decoding with one causal LM (an expert, a merge, the fine-tuned model)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Completion]:
        from fusionroute.decoding import greedy_generate

        outputs = greedy_generate(self.model, encode_prompts(self.tokenizer, prompts), max_new_tokens,
                                  self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        eos = self.tokenizer.eos_token_id
        # one forward per emitted token (the EOS step included)
        return [Completion(decode(self.tokenizer, ids), list(ids[: without_eos(ids, eos)]), forwards=len(ids))
                for ids in outputs]


@register_method("single")
def build_single(ctx: MethodContext) -> SingleModelGenerator:
    return SingleModelGenerator(load_causal_lm(ctx.inputs["model"], ctx.dtype, ctx.device), load_tokenizer(ctx.tokenizer))


@dataclass
class FusionRouteGenerator:
    """Eq. 1 decoding: router log-probs + the selected expert's log-probs (or, with
    `use_complementary=False`, the routing-only ablation of Table 2)."""

    router: RouterModel
    experts: list[PreTrainedModel]
    tokenizer: PreTrainedTokenizerBase
    use_complementary: bool = True

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Completion]:
        from fusionroute.decoding import fused_generate

        outputs = fused_generate(self.router, self.experts, encode_prompts(self.tokenizer, prompts), max_new_tokens,
                                 self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                                 use_complementary=self.use_complementary)
        eos = self.tokenizer.eos_token_id
        completions = []
        for out in outputs:
            n = without_eos(out.token_ids, eos)
            completions.append(Completion(decode(self.tokenizer, out.token_ids), list(out.token_ids[:n]),
                                          list(out.expert_ids[:n]), out.forwards))
        return completions


@register_method("fusionroute")
def build_fusionroute(ctx: MethodContext) -> FusionRouteGenerator:
    from fusionroute.experts import ExpertPool
    from fusionroute.models import DTYPES

    router = RouterModel.from_pretrained(ctx.inputs["router"], dtype=DTYPES[ctx.dtype]).to(ctx.device).eval()
    pool = ExpertPool.load(router.config.expert_names, ctx.inputs["experts"], ctx.tokenizer, ctx.dtype, ctx.device)
    return FusionRouteGenerator(router, pool.models, pool.tokenizer, bool(ctx.params.get("use_complementary", True)))

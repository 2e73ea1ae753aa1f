"""Sequence Selection: every expert writes a full greedy response; the reward model picks one.

Forward accounting (Completion.forwards, per sample): one forward per decode step per expert
that the sample itself needed (the prefill that yields the first token counts as one; a response
that stops at EOS after n tokens cost n + 1 steps, one cut at `max_new_tokens` cost
`max_new_tokens`), plus one reward-model forward per scored response (n_experts). A forward is
one model call on one sequence, whatever the batching: rows decoded in one batched call each
count their own steps.

Also holds the helpers Collab shares: prompt encoding (BOS + prompt tokens, the same boundary as
`fusionroute.data.encode_pair`), the greedy call with its step count. The experts' shared
vocabulary and end ids come from `fusionroute.experts.ExpertPool` (policy: fusionroute.vocab).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from baselines.reward import RewardScorer, instruction_from_prompt
from fusionroute.generation import Completion
from fusionroute.vocab import SharedVocabulary


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of full (templated) prompts, BOS first, as the experts were trained to see them."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        out.append(ids)
    return out


def greedy_with_steps(
    model: PreTrainedModel, prompts_ids: list[list[int]], max_new_tokens: int, stop_ids: int | Sequence[int] | None,
    pad_token_id: int, vocab_size: int | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Greedy continuations (end id and padding removed) and the decode steps each row spent.

    Wraps `fusionroute.decoding.greedy_generate`, the project's one batched greedy decoder;
    `stop_ids` are every end id of the models (see fusionroute.vocab), `vocab_size` the shared range.
    """
    from fusionroute.decoding import greedy_generate
    from fusionroute.vocab import stop_set

    if max_new_tokens <= 0 or not prompts_ids:
        return [[] for _ in prompts_ids], [0] * len(prompts_ids)
    stops = stop_set(stop_ids)
    raw = greedy_generate(model, prompts_ids, max_new_tokens, sorted(stops), pad_token_id, vocab_size=vocab_size)
    rows = _as_token_lists(raw)
    if len(rows) != len(prompts_ids):
        raise RuntimeError(f"greedy_generate returned {len(rows)} rows for {len(prompts_ids)} prompts")
    tokens, steps = [], []
    for row in rows:
        ends = [k for k, t in enumerate(row) if t in stops]
        if ends:
            row = row[: ends[0]]
        elif pad_token_id is not None:
            while row and row[-1] == pad_token_id:  # right padding of rows that finished early
                row = row[:-1]
        row = row[:max_new_tokens]
        tokens.append(row)
        # a row shorter than the budget ended by emitting an end id, which took one more forward
        steps.append(min(len(row) + 1, max_new_tokens))
    return tokens, steps


def _as_token_lists(raw: Any) -> list[list[int]]:
    for attr in ("token_ids", "sequences", "tokens"):
        if hasattr(raw, attr) and not isinstance(raw, (list, tuple, torch.Tensor)):
            raw = getattr(raw, attr)
            break
    if isinstance(raw, torch.Tensor):
        return [list(map(int, r)) for r in raw.tolist()]
    return [list(map(int, r.tolist() if isinstance(r, torch.Tensor) else r)) for r in raw]


def stop_ids(vocab: SharedVocabulary | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The pool's end ids (every model's), or the tokenizer's eos when no pool was built."""
    return list(vocab.stop_ids) if vocab is not None else [tokenizer.eos_token_id]


def vocab_size(vocab: SharedVocabulary | None) -> int | None:
    return vocab.size if vocab is not None else None


class PromptInstructions:
    """Recovers the instruction (what the reward model scores against) from a templated prompt."""

    def __init__(self, prompt_template: str | None):
        self.template = prompt_template

    def __call__(self, prompt: str) -> str:
        if self.template is None:
            return prompt  # the scorer then sees the full prompt as the instruction
        return instruction_from_prompt(self.template, prompt)


class SequenceSelection:
    """Generator: best-of-experts by reward, one full greedy response per expert."""

    def __init__(self, experts: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, scorer: RewardScorer,
                 prompt_template: str | None = None, vocab: SharedVocabulary | None = None):
        if not experts:
            raise ValueError("Sequence Selection needs at least one expert")
        self.experts = list(experts)
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.vocab = vocab
        # When no template is given, the RM's own (a trained tiny RM stores it) is the world's template.
        self.instruction = PromptInstructions(prompt_template or scorer.prompt_template)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Completion]:
        tok = self.tokenizer
        prompt_ids = encode_prompts(tok, prompts)
        instructions = [self.instruction(p) for p in prompts]
        tokens, steps = [], []
        for model in self.experts:
            t, s = greedy_with_steps(model, prompt_ids, max_new_tokens, stop_ids(self.vocab, tok), tok.pad_token_id,
                                     vocab_size(self.vocab))
            tokens.append(t)
            steps.append(s)
        n, n_exp = len(prompts), len(self.experts)
        texts = [[tok.decode(tokens[e][i], skip_special_tokens=True) for i in range(n)] for e in range(n_exp)]
        flat = self.scorer.score([instructions[i] for e in range(n_exp) for i in range(n)],
                                 [texts[e][i] for e in range(n_exp) for i in range(n)])
        out = []
        for i in range(n):
            rewards = [flat[e * n + i] for e in range(n_exp)]
            best = max(range(n_exp), key=lambda e: (rewards[e], -e))  # first expert wins a tie
            out.append(Completion(
                text=texts[best][i],
                token_ids=tokens[best][i],
                expert_ids=[best] * len(tokens[best][i]),
                forwards=sum(steps[e][i] for e in range(n_exp)) + n_exp,
                extra={"chosen_expert": best, "rewards": rewards},
            ))
        return out

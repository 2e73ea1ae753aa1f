"""Decoders for the tests and scripts/bench_decoding.py only (the library never imports them).

- ``reference_fused_generate``: the oracle of ``fused_generate``. One row at a time, no padding, no
  cache: at every step the router and the selected expert recompute the full prefix.
- ``reference_greedy_generate``: the oracle of ``greedy_generate``, the same way.
- ``naive_fused_generate``: the speed baseline. Every expert runs on every row at every step (with
  KV caches), then the selected expert's log-probs are used.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from fusionroute.decoding.cache import _lm_call, _model_device, _router_call, _RowCache
from fusionroute.decoding.decoders import (
    FusedOutput,
    _check_prompts,
    _decode_rows,
    _logits_vocab,
    _shared,
    _with_tokens,
    check_shared_vocab,
    combine_scores,
)
from fusionroute.router import RouterModel
from fusionroute.vocab import stop_set

__all__ = ["naive_fused_generate", "reference_fused_generate", "reference_greedy_generate"]


# --------------------------------------------------------------------------------------------
# the naive baseline: every expert on every row at every step


@torch.inference_mode()
def naive_fused_generate(router: RouterModel, experts: Sequence[PreTrainedModel], prompts_ids: list[list[int]],
                         max_new_tokens: int, eos_token_id: int | Sequence[int] | None, pad_token_id: int | None,
                         use_complementary: bool = True, vocab_size: int | None = None) -> list[FusedOutput]:
    # the parameters of decoders.fused_generate (minus its cost knob), so a test swaps one for the other
    """Eq. 1 decoding that runs the router and EVERY expert on every live row at every step (each
    with a KV cache), then uses the selected expert. The baseline of the speed benchmark."""
    vocab = check_shared_vocab(router, experts, vocab_size)
    outputs = [FusedOutput() for _ in prompts_ids]
    r_dev = router.device
    calls = [_router_call(router)] + [_lm_call(e) for e in experts]
    devs = [r_dev] + [_model_device(e) for e in experts]

    def make_caches(capacity: int) -> list[_RowCache]:
        return [_RowCache(m, len(prompts_ids), capacity) for m in (router.lm, *experts)]

    def step(caches: Sequence[_RowCache], live: list[int], seqs: list[list[int]]) -> list[int]:
        n = len(live)
        rows, chunks = list(range(n)), caches[0].new_tokens(seqs)
        r_logits, w = caches[0].run(calls[0], rows, chunks, pad_token_id, devs[0])
        all_logits = [caches[i].run(calls[i], rows, chunks, pad_token_id, devs[i]) for i in range(1, len(calls))]
        r_logits = _shared(r_logits, vocab, "the router")
        all_logits = [_shared(lg, vocab, "an expert") for lg in all_logits]
        selected = w.argmax(dim=-1)
        stacked = torch.stack([lg.to(device=r_dev, dtype=r_logits.dtype) for lg in all_logits], dim=1)
        e_logits = stacked[torch.arange(n, device=r_dev), selected.to(r_dev)]
        score = combine_scores(r_logits if use_complementary else None, e_logits)
        for k, e in zip(live, selected.tolist()):
            outputs[k].expert_ids.append(e)
            outputs[k].forwards += len(calls)
        return score.argmax(dim=-1).tolist()

    return _with_tokens(outputs, _decode_rows(prompts_ids, max_new_tokens, eos_token_id, make_caches, step))


# --------------------------------------------------------------------------------------------
# the oracles: one row at a time, the full prefix recomputed at every step


def _last_logits_no_cache(model: torch.nn.Module, ids: list[int], device: torch.device):
    return model(input_ids=torch.tensor([ids], dtype=torch.long, device=device), use_cache=False)


def _one_row_at_a_time(
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    next_token: Callable[[int, list[int]], int],
) -> list[list[int]]:
    """The oracles' loop: ``next_token(i, seq)`` is prompt i's next token after `seq` (prompt +
    emitted tokens); a row stops after an end id or `max_new_tokens` tokens. Returns the emitted
    tokens of each prompt (a final end id included)."""
    _check_prompts(prompts_ids, max_new_tokens)
    stops = stop_set(eos_token_id)
    results = []
    for i, prompt in enumerate(prompts_ids):
        seq, out = list(prompt), []
        while len(out) < max_new_tokens:
            tok = next_token(i, seq)
            out.append(tok)
            seq.append(tok)
            if tok in stops:
                break
        results.append(out)
    return results


@torch.inference_mode()
def reference_fused_generate(router: RouterModel, experts: Sequence[PreTrainedModel], prompts_ids: list[list[int]],
                             max_new_tokens: int, eos_token_id: int | Sequence[int] | None, pad_token_id: int | None,
                             use_complementary: bool = True, vocab_size: int | None = None) -> list[FusedOutput]:
    # the parameters of decoders.fused_generate (minus its cost knob), so a test swaps one for the other
    """The test oracle: one row at a time, no padding, no cache; at every step the router and the
    selected expert recompute the whole prefix. Slow (quadratic) on purpose."""
    vocab = check_shared_vocab(router, experts, vocab_size)
    del pad_token_id  # no padding here
    outputs = [FusedOutput() for _ in prompts_ids]

    def next_token(i: int, seq: list[int]) -> int:
        r_out = _last_logits_no_cache(router, seq, router.device)
        r_logits, w = r_out.logits[0, -1], r_out.routing_logits[0, -1]
        e = int(w.argmax())
        expert = experts[e]
        e_logits = _last_logits_no_cache(expert, seq, _model_device(expert)).logits[0, -1]
        r_logits = _shared(r_logits, vocab, "the router")
        e_logits = _shared(e_logits, vocab, f"expert {e}")
        score = combine_scores(r_logits if use_complementary else None, e_logits.to(router.device))
        outputs[i].expert_ids.append(e)
        outputs[i].forwards += 2
        return int(score.argmax())

    return _with_tokens(outputs, _one_row_at_a_time(prompts_ids, max_new_tokens, eos_token_id, next_token))


@torch.inference_mode()
def reference_greedy_generate(model: PreTrainedModel, prompts_ids: list[list[int]], max_new_tokens: int,
                              eos_token_id: int | Sequence[int] | None, vocab_size: int | None = None) -> list[list[int]]:
    """The oracle of ``greedy_generate``: one row at a time, full prefix recomputed each step."""
    device = _model_device(model)
    vocab = vocab_size or _logits_vocab(model)

    def next_token(i: int, seq: list[int]) -> int:
        return int(_shared(_last_logits_no_cache(model, seq, device).logits[0, -1], vocab, "the model").argmax())

    return _one_row_at_a_time(prompts_ids, max_new_tokens, eos_token_id, next_token)

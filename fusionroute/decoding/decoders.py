"""The production decoders: greedy FusionRoute decoding (``fused_generate``) and single-model greedy
decoding (``greedy_generate``), with the checks, the Eq. 1 score and the batched loop they share.

``fused_generate``: the router and every expert keep a KV cache (``cache._RowCache``). The router
runs on every live row each step. Each expert runs only on the rows that selected it, grouped into
one batched forward per expert (or a few, see ``_partition``); an expert that a row did not select
for k steps catches up on those k tokens in the same forward that computes its logits when it is
selected again (the first selection of an expert processes the whole prompt: experts are prefilled
lazily, so an expert that a row never selects never runs on that row).

Cost model (see scripts/bench_decoding.py for measurements). Per step the fast decoder makes
1 + (number of distinct experts selected in the batch) model calls; the naive one
(``oracles.naive_fused_generate``) 1 + n_experts. Catch-up does not save the experts' compute: an
expert that a row uses again must process every token of the prefix eventually, so only the tokens
after an expert's last use by a row are saved. The gain is therefore in model calls (weight reads
and per-call overhead), which dominate small-batch decoding (about 2x the naive loop at batch 1
with three experts); when the batch is large enough that decoding is compute-bound and every
expert is selected by some row at every step, fast and naive cost about the same.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from fusionroute.decoding.cache import _lm_call, _model_device, _router_call, _RowCache
from fusionroute.router import RouterModel
from fusionroute.vocab import check_logit_widths, stop_set


@dataclass
class FusedOutput:
    token_ids: list[int] = field(default_factory=list)  # emitted tokens (final eos included)
    expert_ids: list[int] = field(default_factory=list)  # the selected expert, one per emitted token
    forwards: int = 0  # model invocations (router + experts) whose batch contained this row


# --------------------------------------------------------------------------------------------
# checks and small helpers


def _logits_vocab(model: torch.nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def check_shared_vocab(router: RouterModel, experts: Sequence[PreTrainedModel], vocab_size: int | None = None) -> int:
    """The vocab width decoding uses. With `vocab_size` (the shared range of ``fusionroute.vocab``)
    every model needs at least that many logits and larger ids are masked; without it, router and
    experts must produce logits of one width (ValueError otherwise)."""
    if len(experts) != router.config.n_experts:
        raise ValueError(
            f"the router routes over {router.config.n_experts} experts {router.config.expert_names}, "
            f"but {len(experts)} expert models were given"
        )
    router_vocab = _logits_vocab(router.lm)
    expert_vocabs = [_logits_vocab(e) for e in experts]
    if vocab_size is not None:
        names = ["router", *router.config.expert_names]
        return check_logit_widths(dict(zip(names, [router_vocab, *expert_vocabs])), vocab_size)
    if any(v != router_vocab for v in expert_vocabs):
        names = router.config.expert_names
        detail = ", ".join(f"{n}={v}" for n, v in zip(names, expert_vocabs))
        raise ValueError(
            f"router and experts must share one vocabulary: router vocab size {router_vocab}, "
            f"expert vocab sizes {detail}"
        )
    return router_vocab


def _check_prompts(prompts_ids: list[list[int]], max_new_tokens: int) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    for i, p in enumerate(prompts_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token (e.g. BOS)")


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax in at least float32 (half-precision logits are upcast)."""
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def combine_scores(router_logits: torch.Tensor | None, expert_logits: torch.Tensor) -> torch.Tensor:
    """The Eq. 1 score of each candidate token (routing-only when router_logits is None)."""
    score = _log_probs(expert_logits)
    if router_logits is not None:
        score = score + _log_probs(router_logits).to(score.device)
    return score


def _shared(logits: torch.Tensor, vocab: int, who: str) -> torch.Tensor:
    """The logits of the shared id range (ids >= vocab are masked, see fusionroute.vocab)."""
    if logits.shape[-1] < vocab:
        raise ValueError(f"{who} produced logits over {logits.shape[-1]} tokens, the router over {vocab}")
    return logits[..., :vocab]


def _with_tokens(outputs: list[FusedOutput], token_ids: list[list[int]]) -> list[FusedOutput]:
    """`outputs` with each row's emitted tokens set."""
    for out, ids in zip(outputs, token_ids):
        out.token_ids = ids
    return outputs


# --------------------------------------------------------------------------------------------
# the batched greedy loop


Step = Callable[[Sequence[_RowCache], list[int], list[list[int]]], list[int]]


def _decode_rows(
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    make_caches: Callable[[int], Sequence[_RowCache]],
    step: Step,
) -> list[list[int]]:
    """The loop of the cached decoders. ``make_caches(capacity)`` makes the decode's KV caches (a
    row per prompt, room for `capacity` tokens). Each step, ``step(caches, live, seqs)`` gets the
    live rows (their prompt indices, in storage order) and their full sequences (prompt + emitted
    tokens) and returns each row's next token. A row stops after an end id or `max_new_tokens`
    tokens and is dropped from every cache. Returns the emitted tokens of each prompt (a final
    end id included)."""
    _check_prompts(prompts_ids, max_new_tokens)
    stops = stop_set(eos_token_id)
    emitted: list[list[int]] = [[] for _ in prompts_ids]
    if max_new_tokens == 0 or not prompts_ids:
        return emitted
    caches = make_caches(max(len(p) for p in prompts_ids) + max_new_tokens + 1)
    live = list(range(len(prompts_ids)))  # prompt index of each storage row
    seqs = [list(p) for p in prompts_ids]  # full token sequence of each storage row
    while True:
        keep = []
        for k, tok in enumerate(step(caches, live, seqs)):
            emitted[live[k]].append(tok)
            seqs[k].append(tok)
            if tok not in stops and len(emitted[live[k]]) < max_new_tokens:
                keep.append(k)
        if not keep:
            return emitted
        if len(keep) < len(live):
            for cache in caches:
                cache.keep_rows(keep)
            live = [live[k] for k in keep]
            seqs = [seqs[k] for k in keep]


# --------------------------------------------------------------------------------------------
# partitioning one expert's rows into forwards


def _partition(lens: list[int], overhead_tokens: int) -> list[list[int]]:
    """Split rows (given their chunk lengths) into forwards minimising
    sum over forwards of (overhead_tokens + n_rows * max_chunk_len): a forward pads every row to its
    longest chunk, and each extra forward costs a fixed overhead. Returns lists of positions."""
    order = sorted(range(len(lens)), key=lambda i: lens[i])
    sl = [lens[i] for i in order]
    n = len(sl)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + overhead_tokens + (j - i) * sl[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


# --------------------------------------------------------------------------------------------
# the fast FusionRoute decoder


@torch.inference_mode()
def fused_generate(
    router: RouterModel,
    experts: Sequence[PreTrainedModel],
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None,
    use_complementary: bool = True,
    overhead_tokens: int = 32,
    vocab_size: int | None = None,
) -> list[FusedOutput]:
    """Greedy FusionRoute decoding of a batch of prompts (token id lists, any lengths).

    ``overhead_tokens``: the cost of one extra forward, in padded token-rows; an expert's rows
    whose catch-up chunks differ a lot in length are split into several forwards when that
    saves more padded tokens than this (see ``_partition``)."""
    vocab = check_shared_vocab(router, experts, vocab_size)
    outputs = [FusedOutput() for _ in prompts_ids]
    r_dev = router.device
    e_devs = [_model_device(e) for e in experts]
    r_call, e_calls = _router_call(router), [_lm_call(e) for e in experts]

    def make_caches(capacity: int) -> list[_RowCache]:
        B, longest = len(prompts_ids), max(len(p) for p in prompts_ids)
        return [_RowCache(router.lm, B, capacity)] + [_RowCache(e, B, capacity, align_end=longest) for e in experts]

    def step(caches: Sequence[_RowCache], live: list[int], seqs: list[list[int]]) -> list[int]:
        r_cache, *e_caches = caches
        n = len(live)
        r_logits, w = r_cache.run(r_call, list(range(n)), r_cache.new_tokens(seqs), pad_token_id, r_dev)
        r_logits = _shared(r_logits, vocab, "the router")
        for k in range(n):
            outputs[live[k]].forwards += 1
        selected = w.argmax(dim=-1).tolist()
        e_logits = torch.empty((n, vocab), dtype=r_logits.dtype, device=r_dev)
        for e in range(len(experts)):
            rows = [k for k in range(n) if selected[k] == e]
            if not rows:
                continue
            cache = e_caches[e]
            chunks = [seqs[k][cache.n_tokens(k) :] for k in rows]
            for part in _partition([len(c) for c in chunks], overhead_tokens):
                part_rows = [rows[i] for i in part]
                logits = cache.run(e_calls[e], part_rows, [chunks[i] for i in part], pad_token_id, e_devs[e])
                logits = _shared(logits, vocab, f"expert {e} ({router.config.expert_names[e]})")
                e_logits[part_rows] = logits.to(device=r_dev, dtype=e_logits.dtype)
                for k in part_rows:
                    outputs[live[k]].forwards += 1
        for k in range(n):
            outputs[live[k]].expert_ids.append(selected[k])
        score = combine_scores(r_logits if use_complementary else None, e_logits)
        return score.argmax(dim=-1).tolist()

    return _with_tokens(outputs, _decode_rows(prompts_ids, max_new_tokens, eos_token_id, make_caches, step))


# --------------------------------------------------------------------------------------------
# single-model greedy decoding


@torch.inference_mode()
def greedy_generate(
    model: PreTrainedModel,
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """Greedy decoding of one model, batched with left padding and a KV cache. Returns the emitted
    tokens of each prompt (a final eos included), in prompt order."""
    call, device = _lm_call(model), _model_device(model)
    vocab = vocab_size or _logits_vocab(model)

    def step(caches: Sequence[_RowCache], live: list[int], seqs: list[list[int]]) -> list[int]:
        (cache,) = caches
        logits = cache.run(call, list(range(len(live))), cache.new_tokens(seqs), pad_token_id, device)
        return _shared(logits, vocab, "the model").argmax(dim=-1).tolist()

    return _decode_rows(prompts_ids, max_new_tokens, eos_token_id,
                        lambda capacity: [_RowCache(model, len(prompts_ids), capacity)], step)

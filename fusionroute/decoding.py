"""Greedy FusionRoute decoding (Eq. 1), its test oracle, a naive baseline and single-model greedy decoding.

At step t the router reads the prefix and gives routing logits ``w_t`` and its own next-token logits;
``e = argmax w_t``; the selected expert reads the prefix; the next token is
``argmax(log_softmax(router_logits) + log_softmax(expert_e_logits))``. With ``use_complementary=False``
(the routing-only ablation of Table 2) the selected expert's log-probs alone decide the token.

Implementations (all greedy, all give the same tokens and expert ids):

- ``fused_generate``: the fast one. The router and every expert keep a KV cache (``_RowCache``).
  The router runs on every live row each step. Each expert runs only on the rows that selected it,
  grouped into one batched forward per expert (or a few, see ``_partition``); an expert that a row
  did not select for k steps catches up on those k tokens in the same forward that computes its
  logits when it is selected again (the first selection of an expert processes the whole prompt:
  experts are prefilled lazily, so an expert that a row never selects never runs on that row).
  Rows of one forward have different catch-up lengths: chunks are left-padded, the padded slots
  masked with an explicit 2-D attention mask and positions given explicitly, and only the real new
  keys/values are written back into the row's cache. Finished rows are dropped from every cache.
- ``reference_fused_generate``: the oracle. One row at a time, no padding, no cache: at every step
  the router and the selected expert recompute the full prefix.
- ``naive_fused_generate``: the speed baseline. Every expert runs on every row at every step (with
  KV caches), then the selected expert's log-probs are used.
- ``greedy_generate``: one model (an expert, the fine-tuned model, a merge), batched with left
  padding and a KV cache.

Cost model (see scripts/bench_decoding.py for measurements). Per step the fast decoder makes
1 + (number of distinct experts selected in the batch) model calls; the naive one 1 + n_experts.
Catch-up does not save the experts' compute: an expert that a row uses again must process every
token of the prefix eventually, so only the tokens after an expert's last use by a row are
saved. The gain is therefore in model calls (weight reads and per-call overhead), which dominate
small-batch decoding (about 2x the naive loop at batch 1 with three experts); when the batch is
large enough that decoding is compute-bound and every expert is selected by some row at every
step, fast and naive cost about the same.

Conventions:

- ``pad_token_id`` only fills masked slots (``None``: 0).
- ``token_ids`` are the emitted tokens; a row that stops on an end id ends with that token (it
  was emitted, selected an expert and cost forwards). ``eos_token_id`` is one id or several (every
  end id of the models' generation_config: ``<|eot_id|>``, ``<end_of_turn>``, ...); None: no stop.
- ``vocab_size``: the shared id range (``fusionroute.vocab``); logits beyond it are masked (sliced
  off) for every model. None: every model must produce logits of one width.
- ``forwards`` counts model invocations that processed this row: every router call and every
  expert call (prefill and catch-up chunks included) whose batch contained the row. Comparable
  across methods as "model forwards per emitted token" = ``forwards / len(token_ids)``.
- All models must share one vocabulary: the logits' vocab dimension is checked (``ValueError``).
  Token-for-token identity of the shared range is the ExpertPool's check (``fusionroute.vocab``).
- The caches treat every layer as full attention (HF builds the masks from our 2-D masks and
  explicit positions). Sliding-window layers (e.g. Gemma-2's local layers) are exact only while a
  sequence fits in the window (4096 tokens for Gemma-2): their window would count padded slots.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from fusionroute.router import RouterModel
from fusionroute.vocab import check_logit_widths, stop_set

__all__ = [
    "FusedOutput",
    "fused_generate",
    "reference_fused_generate",
    "naive_fused_generate",
    "greedy_generate",
    "reference_greedy_generate",
    "check_shared_vocab",
    "combine_scores",
]


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


def _num_layers(model: torch.nn.Module) -> int:
    return int(model.config.get_text_config(decoder=True).num_hidden_layers)


# --------------------------------------------------------------------------------------------
# the row cache


class _RowLayer(DynamicLayer):
    """One attention layer's keys/values for the live rows of a decode, in preallocated storage
    ``(rows, kv_heads, capacity, head_dim)``. Row r holds its tokens in columns
    ``[start[r], end[r])`` (``start`` > 0 only after a left-padded in-place prefill). What a forward
    sees and where its new keys/values go is decided by the owning cache's current plan."""

    def __init__(self, owner: "_RowCache"):
        super().__init__()
        # a weak reference: a strong one makes cache and layers a cycle, so a dropped cache's
        # storage (GBs at paper scale) would wait for the cycle collector instead of being freed
        self._owner = weakref.ref(owner)
        self.k_store: torch.Tensor | None = None
        self.v_store: torch.Tensor | None = None

    @property
    def owner(self) -> "_RowCache":
        owner = self._owner()
        if owner is None:
            raise RuntimeError("a KV-cache layer was used after its cache was dropped")
        return owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        o = self.owner
        shape_k = (o.n_rows, key_states.shape[1], o.capacity, key_states.shape[3])
        shape_v = (o.n_rows, value_states.shape[1], o.capacity, value_states.shape[3])
        # zeros, not empty: masked slots are still multiplied by 0 in attention, garbage NaN/inf would leak
        self.k_store = torch.zeros(shape_k, dtype=key_states.dtype, device=key_states.device)
        self.v_store = torch.zeros(shape_v, dtype=value_states.dtype, device=value_states.device)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self.owner.plan
        past, C = plan.past_len, key_states.shape[2]
        if plan.inplace is not None:
            a, b = plan.inplace
            self.k_store[a:b, :, past : past + C].copy_(key_states)
            self.v_store[a:b, :, past : past + C].copy_(value_states)
            return self.k_store[a:b, :, : past + C], self.v_store[a:b, :, : past + C]
        # gather: the rows' stored columns [0, past) (one copy), the new chunk after them
        rows = plan.rows_t
        if past + C <= self.owner.capacity:
            keys = self.k_store[:, :, : past + C].index_select(0, rows)
            values = self.v_store[:, :, : past + C].index_select(0, rows)
            keys[:, :, past:].copy_(key_states)
            values[:, :, past:].copy_(value_states)
        else:
            keys = torch.cat([self.k_store[:, :, :past].index_select(0, rows), key_states], dim=2)
            values = torch.cat([self.v_store[:, :, :past].index_select(0, rows), value_states], dim=2)
        # write the real (unpadded) new keys/values back after each row's stored tokens
        src_b, src_t, dst_r, dst_c = plan.scatter
        self.k_store.permute(0, 2, 1, 3)[dst_r, dst_c] = key_states.permute(0, 2, 1, 3)[src_b, src_t]
        self.v_store.permute(0, 2, 1, 3)[dst_r, dst_c] = value_states.permute(0, 2, 1, 3)[src_b, src_t]
        return keys, values

    def get_seq_length(self) -> int:
        plan = self.owner.plan
        return 0 if plan is None else plan.past_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def keep_rows(self, index: torch.Tensor) -> None:
        if self.is_initialized:
            self.k_store = self.k_store.index_select(0, index.to(self.k_store.device))
            self.v_store = self.v_store.index_select(0, index.to(self.v_store.device))


@dataclass
class _Plan:
    past_len: int  # number of cache columns the forward's queries see before the new chunk
    inplace: tuple[int, int] | None  # rows [a, b) used in place, or None for a gather
    rows_t: torch.Tensor | None = None  # gather: storage rows of the batch
    scatter: tuple[torch.Tensor, ...] | None = None  # gather: (batch row, chunk col, store row, store col)


class _RowCache(Cache):
    """KV cache of one model over the live rows of a batched decode, where each forward may run on
    any subset of rows with a different number of new tokens per row (catch-up chunks)."""

    def __init__(self, model: torch.nn.Module, n_rows: int, capacity: int, align_end: int = 0):
        """`align_end`: the column at which a row's first tokens end at the earliest (the longest
        prompt): rows that first use this model at different steps then stay aligned."""
        self.n_rows, self.capacity, self.align_end = n_rows, capacity, min(align_end, capacity)
        super().__init__(layers=[_RowLayer(self) for _ in range(_num_layers(model))])
        self.plan: _Plan | None = None
        self.start = [0] * n_rows  # first valid column of each row
        self.end = [0] * n_rows  # one past the last valid column of each row

    def n_tokens(self, row: int) -> int:
        return self.end[row] - self.start[row]

    def keep_rows(self, keep: list[int]) -> None:
        """Drop the rows not in `keep` (storage rows, in order)."""
        index = torch.tensor(keep, dtype=torch.long)
        for layer in self.layers:
            layer.keep_rows(index)
        self.start = [self.start[r] for r in keep]
        self.end = [self.end[r] for r in keep]
        self.n_rows = len(keep)

    def _aligned_end(self, rows: list[int], ends: list[int], lens: list[int]) -> int:
        """Where a row new to this cache (an expert's first use by the row, e.g. after its first
        tokens came from another expert) should end: where the cache's other rows end after this
        forward. Rows that stay aligned keep later steps on the in-place path (no gathers)."""
        in_forward = set(rows)
        target = max([e + c for e, c in zip(ends, lens) if e > 0]
                     + [self.end[r] for r in range(self.n_rows) if r not in in_forward], default=0)
        # at least where a left-padded prefill of every prompt would end
        return min(max(target, max(lens), self.align_end), self.capacity)

    def run(
        self,
        call: Callable[..., object],
        rows: list[int],
        chunks: list[list[int]],
        pad_token_id: int | None,
        device: torch.device,
    ) -> object:
        """One forward of `call` over storage rows `rows`, each reading its new tokens `chunks[i]`
        after its cached tokens; returns the model output (logits of the last position only)."""
        n = len(rows)
        pad_token_id = 0 if pad_token_id is None else pad_token_id  # padded slots are masked: any id works
        lens = [len(c) for c in chunks]
        C = max(lens)
        ends = [self.end[r] for r in rows]
        E = ends[0]
        contiguous = rows == list(range(rows[0], rows[0] + n))
        same_end = all(e == E for e in ends)
        same_len = all(c == C for c in lens)
        inplace = contiguous and same_end and (same_len or E == 0) and E + C <= self.capacity
        ids: list[int] = []
        pos: list[int] = []
        for r, chunk in zip(rows, chunks):
            pad, first = C - len(chunk), self.end[r] - self.start[r]
            ids += [pad_token_id] * pad + chunk
            pos += [0] * pad + list(range(first, first + len(chunk)))
        target = self._aligned_end(rows, ends, lens) if 0 in ends else 0
        if inplace:
            # fresh rows (E == 0) end at `target`: the columns before their tokens stay masked
            past = max(0, target - C) if E == 0 else E
            new_start = [past + C - c for c in lens] if E == 0 else [self.start[r] for r in rows]
            new_end = [past + C] * n
            cols = torch.arange(past + C, device=device)
            mask = cols[None, :] >= torch.tensor(new_start, device=device)[:, None] if any(new_start) else None
            plan = _Plan(past_len=past, inplace=(rows[0], rows[0] + n))
        else:
            past = max(ends)
            new_end = [target if e == 0 and target >= c else e + c for e, c in zip(ends, lens)]
            new_start = [stop - c if e == 0 else self.start[r] for r, e, c, stop in zip(rows, ends, lens, new_end)]
            cols = torch.arange(past + C, device=device)[None, :]
            starts = torch.tensor([self.start[r] for r in rows], device=device)[:, None]
            ends_t = torch.tensor(ends, device=device)[:, None]
            # each row sees its stored columns [start, end) and the real (unpadded) part of its chunk
            lens_t = torch.tensor(lens, device=device)[:, None]
            mask = ((cols >= starts) & (cols < ends_t)) | (cols >= past + C - lens_t)
            # the real new tokens: chunk column t of batch row i goes to store column new_end - c + t
            scatter: list[list[int]] = [[], [], [], []]
            for i, (r, c, stop) in enumerate(zip(rows, lens, new_end)):
                scatter[0] += [i] * c
                scatter[1] += range(C - c, C)
                scatter[2] += [r] * c
                scatter[3] += range(stop - c, stop)
            plan = _Plan(
                past_len=past,
                inplace=None,
                rows_t=torch.tensor(rows, dtype=torch.long, device=device),
                scatter=tuple(torch.tensor(x, dtype=torch.long, device=device) for x in scatter),
            )
        self.plan = plan
        try:
            out = call(
                input_ids=torch.tensor(ids, dtype=torch.long, device=device).view(n, C),
                attention_mask=mask,
                position_ids=torch.tensor(pos, dtype=torch.long, device=device).view(n, C),
                past_key_values=self,
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            self.plan = None
        for r, s, e in zip(rows, new_start, new_end):
            self.start[r], self.end[r] = s, e
        return out


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _lm_call(model: PreTrainedModel) -> Callable[..., torch.Tensor]:
    def call(**kwargs):
        return model(**kwargs).logits[:, -1]

    return call


def _router_call(router: RouterModel) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def call(**kwargs):
        out = router(**kwargs)
        return out.logits[:, -1], out.routing_logits[:, -1]

    return call


def _shared(logits: torch.Tensor, vocab: int, who: str) -> torch.Tensor:
    """The logits of the shared id range (ids >= vocab are masked, see fusionroute.vocab)."""
    if logits.shape[-1] < vocab:
        raise ValueError(f"{who} produced logits over {logits.shape[-1]} tokens, the router over {vocab}")
    return logits[..., :vocab]


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
# the fast decoder


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
    stops = stop_set(eos_token_id)
    _check_prompts(prompts_ids, max_new_tokens)
    outputs = [FusedOutput() for _ in prompts_ids]
    if max_new_tokens == 0 or not prompts_ids:
        return outputs
    capacity = max(len(p) for p in prompts_ids) + max_new_tokens + 1
    B = len(prompts_ids)
    r_dev = router.device
    r_cache = _RowCache(router.lm, B, capacity)
    e_caches = [_RowCache(e, B, capacity, align_end=max(len(p) for p in prompts_ids)) for e in experts]
    e_devs = [_model_device(e) for e in experts]
    r_call, e_calls = _router_call(router), [_lm_call(e) for e in experts]
    seqs = [list(p) for p in prompts_ids]  # full token sequence of each row (storage order = live)
    live = list(range(B))  # original index of each storage row
    r_chunks = [list(p) for p in prompts_ids]
    while live:
        n = len(live)
        r_logits, w = r_cache.run(r_call, list(range(n)), r_chunks, pad_token_id, r_dev)
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
        score = combine_scores(r_logits if use_complementary else None, e_logits)
        next_tokens = score.argmax(dim=-1).tolist()
        keep = []
        for k in range(n):
            out, tok = outputs[live[k]], next_tokens[k]
            out.token_ids.append(tok)
            out.expert_ids.append(selected[k])
            seqs[k].append(tok)
            if tok not in stops and len(out.token_ids) < max_new_tokens:
                keep.append(k)
        if len(keep) < n:
            if not keep:
                break
            for cache in (r_cache, *e_caches):
                cache.keep_rows(keep)
            live = [live[k] for k in keep]
            seqs = [seqs[k] for k in keep]
        r_chunks = [[s[-1]] for s in seqs]
    return outputs


# --------------------------------------------------------------------------------------------
# the naive baseline: every expert on every row at every step


@torch.inference_mode()
def naive_fused_generate(
    router: RouterModel,
    experts: Sequence[PreTrainedModel],
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None,
    use_complementary: bool = True,
    vocab_size: int | None = None,
) -> list[FusedOutput]:
    """Eq. 1 decoding that runs the router and EVERY expert on every live row at every step (each
    with a KV cache), then uses the selected expert. The baseline of the speed benchmark."""
    vocab = check_shared_vocab(router, experts, vocab_size)
    stops = stop_set(eos_token_id)
    _check_prompts(prompts_ids, max_new_tokens)
    outputs = [FusedOutput() for _ in prompts_ids]
    if max_new_tokens == 0 or not prompts_ids:
        return outputs
    capacity = max(len(p) for p in prompts_ids) + max_new_tokens + 1
    B = len(prompts_ids)
    r_dev = router.device
    caches = [_RowCache(router.lm, B, capacity)] + [_RowCache(e, B, capacity) for e in experts]
    calls = [_router_call(router)] + [_lm_call(e) for e in experts]
    devs = [r_dev] + [_model_device(e) for e in experts]
    live = list(range(B))
    chunks = [list(p) for p in prompts_ids]
    while live:
        n = len(live)
        rows = list(range(n))
        r_logits, w = caches[0].run(calls[0], rows, chunks, pad_token_id, devs[0])
        all_logits = [caches[i].run(calls[i], rows, chunks, pad_token_id, devs[i]) for i in range(1, len(calls))]
        r_logits = _shared(r_logits, vocab, "the router")
        all_logits = [_shared(lg, vocab, "an expert") for lg in all_logits]
        selected = w.argmax(dim=-1)
        stacked = torch.stack([lg.to(device=r_dev, dtype=r_logits.dtype) for lg in all_logits], dim=1)
        e_logits = stacked[torch.arange(n, device=r_dev), selected.to(r_dev)]
        score = combine_scores(r_logits if use_complementary else None, e_logits)
        next_tokens = score.argmax(dim=-1).tolist()
        selected = selected.tolist()
        keep = []
        for k in range(n):
            out, tok = outputs[live[k]], next_tokens[k]
            out.token_ids.append(tok)
            out.expert_ids.append(selected[k])
            out.forwards += len(calls)
            if tok not in stops and len(out.token_ids) < max_new_tokens:
                keep.append(k)
        if len(keep) < n:
            if not keep:
                break
            for cache in caches:
                cache.keep_rows(keep)
            live = [live[k] for k in keep]
        chunks = [[outputs[i].token_ids[-1]] for i in live]
    return outputs


# --------------------------------------------------------------------------------------------
# the oracle


def _last_logits_no_cache(model: torch.nn.Module, ids: list[int], device: torch.device):
    return model(input_ids=torch.tensor([ids], dtype=torch.long, device=device), use_cache=False)


@torch.inference_mode()
def reference_fused_generate(
    router: RouterModel,
    experts: Sequence[PreTrainedModel],
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None,
    use_complementary: bool = True,
    vocab_size: int | None = None,
) -> list[FusedOutput]:
    """The test oracle: one row at a time, no padding, no cache; at every step the router and the
    selected expert recompute the whole prefix. Slow (quadratic) on purpose."""
    vocab = check_shared_vocab(router, experts, vocab_size)
    stops = stop_set(eos_token_id)
    _check_prompts(prompts_ids, max_new_tokens)
    del pad_token_id  # no padding here
    results = []
    for prompt in prompts_ids:
        out = FusedOutput()
        seq = list(prompt)
        while len(out.token_ids) < max_new_tokens:
            r_out = _last_logits_no_cache(router, seq, router.device)
            r_logits, w = r_out.logits[0, -1], r_out.routing_logits[0, -1]
            e = int(w.argmax())
            expert = experts[e]
            e_logits = _last_logits_no_cache(expert, seq, _model_device(expert)).logits[0, -1]
            r_logits = _shared(r_logits, vocab, "the router")
            e_logits = _shared(e_logits, vocab, f"expert {e}")
            score = combine_scores(r_logits if use_complementary else None, e_logits.to(router.device))
            tok = int(score.argmax())
            out.token_ids.append(tok)
            out.expert_ids.append(e)
            out.forwards += 2
            seq.append(tok)
            if tok in stops:
                break
        results.append(out)
    return results


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
    _check_prompts(prompts_ids, max_new_tokens)
    outputs: list[list[int]] = [[] for _ in prompts_ids]
    if max_new_tokens == 0 or not prompts_ids:
        return outputs
    capacity = max(len(p) for p in prompts_ids) + max_new_tokens + 1
    cache = _RowCache(model, len(prompts_ids), capacity)
    call, device = _lm_call(model), _model_device(model)
    stops, vocab = stop_set(eos_token_id), vocab_size or _logits_vocab(model)
    live = list(range(len(prompts_ids)))
    chunks = [list(p) for p in prompts_ids]
    while live:
        n = len(live)
        logits = _shared(cache.run(call, list(range(n)), chunks, pad_token_id, device), vocab, "the model")
        next_tokens = logits.argmax(dim=-1).tolist()
        keep = []
        for k in range(n):
            out, tok = outputs[live[k]], next_tokens[k]
            out.append(tok)
            if tok not in stops and len(out) < max_new_tokens:
                keep.append(k)
        if len(keep) < n:
            if not keep:
                break
            cache.keep_rows(keep)
            live = [live[k] for k in keep]
        chunks = [[outputs[i][-1]] for i in live]
    return outputs


@torch.inference_mode()
def reference_greedy_generate(
    model: PreTrainedModel,
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """The oracle of ``greedy_generate``: one row at a time, full prefix recomputed each step."""
    _check_prompts(prompts_ids, max_new_tokens)
    device = _model_device(model)
    stops, vocab = stop_set(eos_token_id), vocab_size or _logits_vocab(model)
    results = []
    for prompt in prompts_ids:
        seq, out = list(prompt), []
        while len(out) < max_new_tokens:
            tok = int(_shared(_last_logits_no_cache(model, seq, device).logits[0, -1], vocab, "the model").argmax())
            out.append(tok)
            seq.append(tok)
            if tok in stops:
                break
        results.append(out)
    return results

"""The per-row KV cache of the batched decoders (``_RowCache``) and the model calls it runs.

A ``_RowCache`` holds one model's keys/values for the live rows of a batched decode, in
preallocated storage. Each forward may run on any subset of rows with a different number of new
tokens per row (an expert's catch-up chunks): chunks are left-padded, the padded slots masked with
an explicit 2-D attention mask and positions given explicitly, and only the real new keys/values
are written back into the row's cache. Finished rows are dropped with ``keep_rows``.

The cache treats every layer as full attention (HF builds the masks from our 2-D masks and
explicit positions). Sliding-window layers (e.g. Gemma-2's local layers) are exact only while a
sequence fits in the window (4096 tokens for Gemma-2): their window would count padded slots.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from fusionroute.router import RouterModel


def _num_layers(model: torch.nn.Module) -> int:
    return int(model.config.get_text_config(decoder=True).num_hidden_layers)


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

    def new_tokens(self, seqs: list[list[int]]) -> list[list[int]]:
        """The tokens of each row's full sequence `seqs[row]` that this cache has not read yet."""
        return [seq[self.n_tokens(row) :] for row, seq in enumerate(seqs)]

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


# --------------------------------------------------------------------------------------------
# the calls a cache runs


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

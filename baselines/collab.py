"""Collab (Chakraborty et al., ICLR 2025, arXiv 2503.21720): token-level agent switching by an implicit Q-function.

The paper's rule (Sec. 3.4 and Algorithm 1): at state s_t each agent j proposes its top-p tokens
(p = 10 in Sec. 5, a count of tokens despite the name); each candidate z is scored by
    J_j(s_t, z) = Q_j(s_t, z) - alpha * KL(pi_j(.|s_t) || pi_ref(.|s_t)),
where Q_j(s_t, z) = E_{tau ~ pi_j(.|s_t, z)} r_target([s_t, z, tau]) is the target reward of the
candidate continued by the agent that proposed it; the emitted token is argmax_z max_j J_j
(alpha = 1 in Sec. 5). The KL term depends on the agent, not on z: a per-agent offset.

At every step, for every unfinished row:
1. each expert proposes its top-K next tokens (one forward per expert on the row's prefix);
2. each candidate token that is not EOS is extended by a greedy lookahead of L tokens with the
   expert that proposed it (all candidates of one expert, across rows, in one batched call);
3. the reward model scores the text prompt + (emitted + candidate + lookahead) of each candidate:
   our estimate of Q_j, one greedy continuation truncated at L tokens (the paper's tau runs to the
   end of the response, its sampling and number of samples are not stated);
4. the emitted token is the candidate maximising
       reward - alpha * KL(pi_e(.|prefix) || pi_ref(.|prefix)) + weight * log pi_e(candidate | prefix)
   under its proposing expert e (first in expert, then rank, order on ties). The KL term needs a
   reference policy (`reference`, the paper does not name its pi_ref; one more forward per step),
   without one it is 0. `weight` is not in the paper (0 by default): the log-prob term reads the
   closed form of Eq. 2 with pi_ref := the proposing expert, as an earlier version of this file did.
Generation stops at EOS (when an EOS candidate wins) or after `max_new_tokens`. The lookahead is
always L tokens (or up to EOS), also near the end of the budget. A token proposed by several
experts is several candidates, each with its own lookahead and log-prob.

Forward accounting (per row and emitted token, `extra["forwards_per_token"]`, summed into
`Completion.forwards`): n_experts proposal forwards (+ 1 reference forward with the KL term) + the
lookahead decode steps of every candidate (an L-token lookahead costs L forwards, fewer when it hits
EOS; an EOS candidate none) + one reward-model forward per candidate. With no EOS around and no
reference that is n_e + n_e*K*L + n_e*K per token.
A forward is one model call on one sequence, however the calls are batched and however many new
tokens it processes (with the KV caches below a proposal forward reads one new token, the first
one of a row reads its prompt). The step at which EOS wins is counted too, so
`forwards_per_token` has one more entry than `token_ids` when the sample stopped at EOS.

Implementations (same tokens, expert ids, lookaheads and rewards; see tests/baselines/test_collab_cache.py):

- `Collab.generate`: KV caches. Each expert keeps one cache (`fusionroute.decoding.cache._RowCache`) over
  the live rows' committed prefixes (prompt + emitted tokens): the first step prefills the prompts
  (left-padded, one batched forward per expert), every later proposal forward reads only the token
  emitted at the previous step. The lookahead of an expert's candidates forks that cache: the
  rows are copied once per candidate (one `index_select` of the cached keys/values, no forward),
  then one batched greedy decode over all the expert's candidates of all rows reads the candidate
  token and then one token per step: L single-token forwards per expert and step instead of
  re-encoding every prefix. Finished rows are dropped from the caches.
- `Collab.reference_generate`: the original implementation, kept as the oracle of the tests and
  the baseline of scripts/bench_collab.py. No cache across steps: each step every expert re-encodes
  every prefix (`last_logprobs`) and each lookahead is a fresh `greedy_generate` whose prefill
  re-encodes prefix + candidate.
Cached and uncached forwards differ in the last float bits only, so the two agree token for token
unless two candidates' scores (or two logits of a greedy step) are within rounding of each other.

The reward model still reads each candidate's whole text at every step (it works from text in its
own tokenizer, see baselines/reward.py): that is now Collab's remaining per-step cost that grows
with the prefix.

The paper's Collab code is not public; where the paper is silent this is our reading (README,
"Method notes": pi_ref, the rollout's length, sampling and count, EOS candidates, ties).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from baselines.reward import RewardScorer
from baselines.sequence_selection import PromptInstructions, encode_prompts, greedy_with_steps, stop_ids, vocab_size
from fusionroute.decoding.cache import _lm_call, _model_device, _RowCache
from fusionroute.decoding.decoders import _logits_vocab
from fusionroute.generation import Completion
from fusionroute.vocab import SharedVocabulary, stop_set


@dataclass
class CollabParams:
    top_k: int = 10  # candidate tokens proposed by each expert per step (paper Sec. 5: p = 10)
    lookahead: int = 10  # greedy tokens appended to each candidate before the reward model scores it
    weight: float = 0.0  # weight of the proposing expert's log-prob of the candidate (not in the paper: 0)
    alpha: float = 1.0  # weight of KL(pi_e || pi_ref) (paper Sec. 5: alpha = 1); needs a reference policy

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.lookahead < 0:
            raise ValueError(f"Collab needs top_k >= 1 and lookahead >= 0, got {self.top_k}, {self.lookahead}")


@torch.no_grad()
def last_logprobs(model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_token_id: int,
                  vocab: int | None = None) -> torch.Tensor:
    """log-softmax of the next-token logits after each sequence over the shared ids [0, vocab),
    (n, vocab); left-padded batch, no cache (the reference implementation's proposal forward)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = model.device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   use_cache=False).logits[:, -1]
    return _logprobs(logits, vocab)


def _logprobs(logits: torch.Tensor, vocab: int | None) -> torch.Tensor:
    if vocab is not None:
        if logits.shape[-1] < vocab:
            raise ValueError(f"an expert produced logits over {logits.shape[-1]} tokens, "
                             f"the shared vocabulary has {vocab}")
        logits = logits[:, :vocab]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


@dataclass
class _Candidate:
    row: int  # index into the active rows of this step
    expert: int
    token: int
    logprob: float
    lookahead: list[int]
    lookahead_forwards: int = 0
    kl: float = 0.0  # KL(pi_expert(.|prefix) || pi_ref(.|prefix)): the same for all of an expert's candidates


# --------------------------------------------------------------------------------------------
# the two engines: who computes the proposals and the lookaheads


class _UncachedExperts:
    """The reference: every step re-encodes every prefix; lookaheads are fresh greedy decodes."""

    def __init__(self, experts: list[PreTrainedModel], prompt_ids: list[list[int]], max_new_tokens: int,
                 lookahead: int, stops: list[int], pad: int | None, size: int | None):
        self.experts, self.stops, self.pad, self.size = experts, stops, pad, size
        self.prompt_ids = prompt_ids
        self.prefixes: list[list[int]] = []

    def begin_step(self, active: list[int], emitted: list[list[int]]) -> None:
        self.prefixes = [self.prompt_ids[i] + emitted[i] for i in active]

    def propose(self, e: int) -> torch.Tensor:
        return last_logprobs(self.experts[e], self.prefixes, self.pad, self.size)

    def lookahead(self, e: int, rows: list[int], tokens: list[int], length: int) -> tuple[list[list[int]], list[int]]:
        seqs = [self.prefixes[r] + [t] for r, t in zip(rows, tokens)]
        return greedy_with_steps(self.experts[e], seqs, length, self.stops, self.pad, self.size)

    def end_step(self, keep: list[int], tokens: list[int]) -> None:
        pass


def _fork_rows(cache: _RowCache, model: PreTrainedModel, rows: list[int], extra: int) -> _RowCache:
    """A new cache whose row k is a copy of `cache`'s row `rows[k]` (rows may repeat), with room for
    `extra` more tokens. `cache`'s rows must end at one column (they do: every forward of
    `_CachedExperts` feeds the same number of tokens to every live row), and `cache` must have room
    for them too (its stores are sliced, not extended, so one copy makes the fork)."""
    end = cache.end[rows[0]]
    if any(cache.end[r] != end for r in rows) or end + extra > cache.capacity:
        raise RuntimeError("Collab's expert cache is not aligned or too small (an internal error)")
    fork = _RowCache(model, len(rows), end + extra)
    index = torch.tensor(rows, dtype=torch.long)
    for src, dst in zip(cache.layers, fork.layers):
        if not src.is_initialized:
            raise RuntimeError("forking an expert cache that holds no prefix")
        idx = index.to(src.k_store.device)
        # columns [end, end + extra) are copied too (free in the same copy), and overwritten before they are read
        dst.k_store = src.k_store[:, :, : end + extra].index_select(0, idx)
        dst.v_store = src.v_store[:, :, : end + extra].index_select(0, idx)
        dst.dtype, dst.device, dst.is_initialized = src.dtype, src.device, True
    fork.start = [cache.start[r] for r in rows]
    fork.end = [cache.end[r] for r in rows]
    return fork


def _as_greedy_with_steps(rows: list[list[int]], stopped: list[bool], length: int,
                          pad: int | None) -> tuple[list[list[int]], list[int]]:
    """Greedy continuations (end id dropped; `stopped`: the row ended on one) as
    `baselines.sequence_selection.greedy_with_steps` reports them, so that both implementations
    give the same lookaheads and forward counts: that function strips trailing pad ids from a row
    that did not end (meant for right padding, it also strips pad ids a model really emitted; the
    text is the same, pad being a special token the decode skips) and counts min(len + 1, L)
    forwards (L when no end id came, n + 1 when one came after n tokens)."""
    tokens, steps = [], []
    for row, ended in zip(rows, stopped):
        if not ended and pad is not None:
            while row and row[-1] == pad:
                row = row[:-1]
        tokens.append(row)
        steps.append(min(len(row) + 1, length))
    return tokens, steps


class _CachedExperts:
    """One KV cache per expert over the live rows' committed prefixes; storage row k is active row k."""

    def __init__(self, experts: list[PreTrainedModel], prompt_ids: list[list[int]], max_new_tokens: int,
                 lookahead: int, stops: list[int], pad: int | None, size: int | None):
        self.experts, self.stops, self.pad, self.size = experts, stop_set(stops), pad, size
        # room for every committed token, and for the lookahead of a fork (see _fork_rows)
        capacity = max(len(p) for p in prompt_ids) + max_new_tokens + lookahead + 1
        self.caches = [_RowCache(m, len(prompt_ids), capacity) for m in experts]
        self.calls = [_lm_call(m) for m in experts]
        self.devices = [_model_device(m) for m in experts]
        self.pending = [list(p) for p in prompt_ids]  # tokens of each live row not yet in the caches

    def begin_step(self, active: list[int], emitted: list[list[int]]) -> None:
        if len(active) != len(self.pending):
            raise RuntimeError("Collab's expert caches lost track of the live rows (an internal error)")

    def propose(self, e: int) -> torch.Tensor:
        rows = list(range(len(self.pending)))
        logits = self.caches[e].run(self.calls[e], rows, self.pending, self.pad, self.devices[e])
        return _logprobs(logits, self.size)

    @torch.no_grad()
    def lookahead(self, e: int, rows: list[int], tokens: list[int], length: int) -> tuple[list[list[int]], list[int]]:
        """Greedy continuations of each (row, candidate token) and their forwards, exactly as
        `greedy_with_steps` returns them (see `_as_greedy_with_steps`)."""
        model, call, device = self.experts[e], self.calls[e], self.devices[e]
        fork = _fork_rows(self.caches[e], model, rows, length)
        vocab = self.size or _logits_vocab(model)
        out: list[list[int]] = [[] for _ in rows]
        stopped = [False] * len(rows)
        live = list(range(len(rows)))
        chunks = [[t] for t in tokens]
        for _ in range(length):
            logits = fork.run(call, list(range(len(live))), chunks, self.pad, device)
            next_tokens = logits[:, :vocab].argmax(dim=-1).tolist()
            keep = []
            for k, i in enumerate(live):
                if next_tokens[k] in self.stops:
                    stopped[i] = True
                    continue
                out[i].append(next_tokens[k])
                if len(out[i]) < length:
                    keep.append(k)
            if not keep:
                break
            if len(keep) < len(live):
                fork.keep_rows(keep)
                live = [live[k] for k in keep]
            chunks = [[out[i][-1]] for i in live]
        return _as_greedy_with_steps(out, stopped, length, self.pad)

    def end_step(self, keep: list[int], tokens: list[int]) -> None:
        """`keep`: the positions (in this step's active rows) that go on; `tokens`: their emitted token."""
        if len(keep) < len(self.pending) and keep:
            for cache in self.caches:
                cache.keep_rows(keep)
        self.pending = [[t] for t in tokens]


# --------------------------------------------------------------------------------------------
# the generator


class Collab:
    """Generator for the Collab baseline (see module docstring)."""

    def __init__(self, experts: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, scorer: RewardScorer,
                 params: CollabParams, prompt_template: str | None = None, vocab: SharedVocabulary | None = None,
                 reference: PreTrainedModel | None = None):
        if not experts:
            raise ValueError("Collab needs at least one expert")
        self.experts = list(experts)
        self.reference = reference  # pi_ref of the KL term (same vocabulary); None: no KL term
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.params = params
        self.instruction = PromptInstructions(prompt_template or scorer.prompt_template)

    def generate(self, prompts: list[str], max_new_tokens: int, trace: list | None = None) -> list[Completion]:
        """Collab with KV caches (see module docstring). `trace`, when given, receives one list per
        step of the step's candidates (see `_decode`)."""
        return self._decode(prompts, max_new_tokens, _CachedExperts, trace)

    def reference_generate(self, prompts: list[str], max_new_tokens: int,
                           trace: list | None = None) -> list[Completion]:
        """The original implementation (no cache across steps): same outputs, the tests' oracle."""
        return self._decode(prompts, max_new_tokens, _UncachedExperts, trace)

    @torch.no_grad()
    def _decode(self, prompts: list[str], max_new_tokens: int, engine_class: type,
                trace: list | None) -> list[Completion]:
        """The Collab loop, whichever engine computes the experts' proposals and lookaheads. `trace`
        gets, per step, a list of dicts (one per candidate, in scoring order): row (prompt index),
        expert, token, logprob, lookahead, lookahead_forwards, kl, reward, chosen."""
        tok, p = self.tokenizer, self.params
        stops, pad, size = stop_ids(self.vocab, tok), tok.pad_token_id, vocab_size(self.vocab)
        prompt_ids = encode_prompts(tok, prompts)
        instructions = [self.instruction(x) for x in prompts]
        n = len(prompts)
        emitted: list[list[int]] = [[] for _ in range(n)]
        chosen_by: list[list[int]] = [[] for _ in range(n)]
        forwards_per_token: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        engine: Any = None
        n_e = len(self.experts)
        # the reference policy rides along as one more cached model that proposes nothing
        with_ref = self.reference is not None and p.alpha != 0
        if n and max_new_tokens > 0:
            models = self.experts + ([self.reference] if with_ref else [])
            engine = engine_class(models, prompt_ids, max_new_tokens, p.lookahead, stops, pad, size)
        for _ in range(max_new_tokens):
            active = [i for i in range(n) if not done[i]]
            if not active:
                break
            engine.begin_step(active, emitted)
            candidates: list[_Candidate] = []
            proposals = [engine.propose(e) for e in range(n_e)]
            ref_logprobs = engine.propose(n_e) if with_ref else None
            for e, logprobs in enumerate(proposals):
                kl = [0.0] * len(active)
                if ref_logprobs is not None:
                    kl = (logprobs.exp() * (logprobs - ref_logprobs)).sum(dim=-1).clamp(min=0.0).tolist()
                top = logprobs.topk(min(p.top_k, logprobs.shape[-1]), dim=-1)
                for r in range(len(active)):
                    for value, token in zip(top.values[r].tolist(), top.indices[r].tolist()):
                        candidates.append(_Candidate(r, e, int(token), float(value), [], kl=float(kl[r])))
            if p.lookahead > 0:
                for e in range(n_e):
                    mine = [c for c in candidates if c.expert == e and c.token not in stops]
                    if not mine:
                        continue
                    tokens, steps = engine.lookahead(e, [c.row for c in mine], [c.token for c in mine], p.lookahead)
                    for c, t, s in zip(mine, tokens, steps):
                        c.lookahead, c.lookahead_forwards = t, s
            responses = []
            for c in candidates:
                ids = emitted[active[c.row]] + ([] if c.token in stops else [c.token]) + c.lookahead
                responses.append(tok.decode(ids, skip_special_tokens=True))
            rewards = self.scorer.score([instructions[active[c.row]] for c in candidates], responses)
            by_row: dict[int, list[int]] = {}
            for k, c in enumerate(candidates):
                by_row.setdefault(c.row, []).append(k)
            keep, kept_tokens, winners = [], [], set()
            for r, i in enumerate(active):
                ks = by_row[r]
                best = max(ks, key=lambda k: (rewards[k] - p.alpha * candidates[k].kl
                                              + p.weight * candidates[k].logprob, -k))
                winners.add(best)
                cost = n_e + int(with_ref) + sum(candidates[k].lookahead_forwards for k in ks) + len(ks)
                forwards_per_token[i].append(cost)
                win = candidates[best]
                if win.token in stops:
                    done[i] = True
                else:
                    emitted[i].append(win.token)
                    chosen_by[i].append(win.expert)
                    keep.append(r)
                    kept_tokens.append(win.token)
            if trace is not None:
                trace.append([
                    {"row": active[c.row], "expert": c.expert, "token": c.token, "logprob": c.logprob,
                     "lookahead": list(c.lookahead), "lookahead_forwards": c.lookahead_forwards,
                     "kl": c.kl, "reward": rewards[k], "chosen": k in winners}
                    for k, c in enumerate(candidates)
                ])
            engine.end_step(keep, kept_tokens)
        return [
            Completion(
                text=tok.decode(emitted[i], skip_special_tokens=True),
                token_ids=emitted[i],
                expert_ids=chosen_by[i],
                forwards=sum(forwards_per_token[i]),
                extra={"forwards_per_token": forwards_per_token[i]},
            )
            for i in range(n)
        ]

"""Collab (Chakraborty et al. 2025): token-level collaboration scored by a reward model.

At every step, for every unfinished row:
1. each expert proposes its top-K next tokens (one forward per expert on the row's prefix);
2. each candidate token that is not EOS is extended by a greedy lookahead of L tokens with the
   expert that proposed it (all candidates of one expert, across rows, in one batched call);
3. the reward model scores the text prompt + (emitted + candidate + lookahead) of each candidate;
4. the emitted token is the candidate maximising  reward + weight * log pi_e(candidate | prefix)
   under its proposing expert e (first in expert, then rank, order on ties).
Generation stops at EOS (when an EOS candidate wins) or after `max_new_tokens`. The lookahead is
always L tokens (or up to EOS), also near the end of the budget. A token proposed by several
experts is several candidates, each with its own lookahead and log-prob.

Forward accounting (per row and emitted token, `extra["forwards_per_token"]`, summed into
`Completion.forwards`): n_experts proposal forwards + the lookahead decode steps of every candidate
(an L-token lookahead costs L forwards, fewer when it hits EOS; an EOS candidate none) + one
reward-model forward per candidate. With no EOS around that is n_e + n_e*K*L + n_e*K per token.
A forward is one model call on one sequence, however the calls are batched. The step at which
EOS wins is counted too, so `forwards_per_token` has one more entry than `token_ids` when the
sample stopped at EOS.

The paper's Collab code is not public; this reading follows DESIGN.md section 1. Prefixes are
re-encoded each step (no KV cache across steps): correct first, Collab's cost is dominated by the
lookaheads anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from baselines.reward import RewardScorer
from baselines.sequence_selection import PromptInstructions, encode_prompts, greedy_with_steps, stop_ids, vocab_size
from fusionroute.generation import Completion
from fusionroute.vocab import SharedVocabulary


@dataclass
class CollabParams:
    top_k: int = 5  # candidate tokens proposed by each expert per step
    lookahead: int = 10  # greedy tokens appended to each candidate before the reward model scores it
    weight: float = 1.0  # weight of the proposing expert's log-prob of the candidate vs the reward

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.lookahead < 0:
            raise ValueError(f"Collab needs top_k >= 1 and lookahead >= 0, got {self.top_k}, {self.lookahead}")


@torch.no_grad()
def last_logprobs(model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_token_id: int,
                  vocab: int | None = None) -> torch.Tensor:
    """log-softmax of the next-token logits after each sequence over the shared ids [0, vocab),
    (n, vocab); left-padded batch."""
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
    if vocab is not None:
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


class Collab:
    """Generator for the Collab baseline (see module docstring)."""

    def __init__(self, experts: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, scorer: RewardScorer,
                 params: CollabParams, prompt_template: str | None = None, vocab: SharedVocabulary | None = None):
        if not experts:
            raise ValueError("Collab needs at least one expert")
        self.experts = list(experts)
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.params = params
        self.instruction = PromptInstructions(prompt_template or scorer.prompt_template)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Completion]:
        tok, p = self.tokenizer, self.params
        stops, pad, size = stop_ids(self.vocab, tok), tok.pad_token_id, vocab_size(self.vocab)
        prompt_ids = encode_prompts(tok, prompts)
        instructions = [self.instruction(x) for x in prompts]
        n = len(prompts)
        emitted: list[list[int]] = [[] for _ in range(n)]
        chosen_by: list[list[int]] = [[] for _ in range(n)]
        forwards_per_token: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        for _ in range(max_new_tokens):
            active = [i for i in range(n) if not done[i]]
            if not active:
                break
            prefixes = [prompt_ids[i] + emitted[i] for i in active]
            candidates: list[_Candidate] = []
            for e, model in enumerate(self.experts):
                logprobs = last_logprobs(model, prefixes, pad, size)
                top = logprobs.topk(min(p.top_k, logprobs.shape[-1]), dim=-1)
                for r in range(len(active)):
                    for value, token in zip(top.values[r].tolist(), top.indices[r].tolist()):
                        candidates.append(_Candidate(r, e, int(token), float(value), []))
            if p.lookahead > 0:
                for e, model in enumerate(self.experts):
                    mine = [c for c in candidates if c.expert == e and c.token not in stops]
                    if not mine:
                        continue
                    seqs = [prefixes[c.row] + [c.token] for c in mine]
                    tokens, steps = greedy_with_steps(model, seqs, p.lookahead, stops, pad, size)
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
            for r, i in enumerate(active):
                ks = by_row[r]
                best = max(ks, key=lambda k: (rewards[k] + p.weight * candidates[k].logprob, -k))
                cost = len(self.experts) + sum(candidates[k].lookahead_forwards for k in ks) + len(ks)
                forwards_per_token[i].append(cost)
                win = candidates[best]
                if win.token in stops:
                    done[i] = True
                else:
                    emitted[i].append(win.token)
                    chosen_by[i].append(win.expert)
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

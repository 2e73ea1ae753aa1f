"""The losses of FusionRoute (Eq. 2-4) and of the baselines that share its training loop.

Conventions: `logits` are (batch, seq, vocab) over the input sequence; `labels` are the input ids
with IGNORE (-100) on positions that are not trained. Position t's logits predict labels[t + 1];
`shift` aligns the two once so every loss works on (batch, seq - 1) target positions.

Memory. The token log-probs the LM loss and (C)DPO need (`token_logprobs`) are a selective
log-softmax: the target's logit minus a logsumexp over the vocabulary. While the logits hold at
most LOGPROB_CHUNK_ELEMENTS numbers (every tiny-world batch) that is the plain computation on one
fp32 copy of the logits; above it (8B models: 16 x 2048 positions x 128k vocabulary would be a
17 GB fp32 copy, plus its log-softmax) a custom autograd function walks chunks of positions: each
chunk is upcast to fp32, reduced to its logsumexp and target log-prob, and dropped; the backward
recomputes each chunk's softmax and writes the gradient straight into one tensor of the logits'
own dtype. Nothing of fp32 [batch, length, vocab] size is ever allocated.

Normalisers. `lm_loss` and `routing_loss` average over the trained (informative) positions of
the batch they are given; with `denominator` they divide by that count instead, so a trainer that
splits a micro-batch into smaller pieces (a token budget) can give every piece the count of the
whole micro-batch and the pieces' losses add up to the micro-batch's loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fusionroute.data import IGNORE

ROUTING_READINGS = ("literal", "mixture")
LOGPROB_CHUNK_ELEMENTS = 1 << 25  # logits above this many numbers take the chunked path (chunks of <= this many)


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at t with the target at t+1; returns (logits, targets with IGNORE->0, mask)."""
    logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    return logits, targets.masked_fill(~mask, 0), mask


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] without materialising the full log-softmax twice."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log softmax(logits)[target] over rows of a 2-D (rows, vocab) view, `rows_per_chunk` rows at a
    time. Saves the logits (no copy) and one fp32 logsumexp per row; the backward recomputes each
    chunk's softmax: d/dlogits = g * (onehot(target) - softmax)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, rows_per_chunk: int) -> torch.Tensor:
        n = logits.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        for s in range(0, n, rows_per_chunk):
            e = min(n, s + rows_per_chunk)
            chunk = logits[s:e].float()
            lse[s:e] = torch.logsumexp(chunk, dim=-1)
            out[s:e] = chunk.gather(-1, targets[s:e].unsqueeze(-1)).squeeze(-1) - lse[s:e]
            del chunk
        ctx.save_for_backward(logits, targets, lse)
        ctx.rows_per_chunk = rows_per_chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        g = grad_out.float()
        n = logits.shape[0]
        for s in range(0, n, ctx.rows_per_chunk):
            e = min(n, s + ctx.rows_per_chunk)
            chunk = (logits[s:e].float() - lse[s:e].unsqueeze(-1)).exp_()  # softmax (a new fp32 chunk)
            chunk.mul_(-g[s:e].unsqueeze(-1))
            chunk.scatter_add_(-1, targets[s:e].unsqueeze(-1), g[s:e].unsqueeze(-1))
            grad[s:e] = chunk
            del chunk
        return grad, None, None


def chunked_gather_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                            chunk_elements: int | None = None) -> torch.Tensor:
    """`gather_logprobs` for (..., vocab) logits without an fp32 copy of the whole tensor: at most
    `chunk_elements` logits are upcast at a time, forward and backward. Returns fp32 (...)."""
    vocab = logits.shape[-1]
    rows = max(1, (chunk_elements or LOGPROB_CHUNK_ELEMENTS) // vocab)
    lead = logits.shape[:-1]
    if logits.dim() == 2 or logits.is_contiguous():
        flat = logits.reshape(-1, vocab)  # a view
        return _SelectiveLogSoftmax.apply(flat, targets.reshape(-1), rows).view(lead)
    # a strided view (e.g. logits[:, :-1]): one row of the batch at a time, each a view
    return torch.stack([chunked_gather_logprobs(logits[b], targets[b], chunk_elements) for b in range(lead[0])])


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                   chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each target token (batch, seq - 1) in fp32, its mask (batch, seq - 1)).

    Logits of at most `chunk_elements` (default LOGPROB_CHUNK_ELEMENTS) numbers: `shift` and
    `gather_logprobs`, exactly as always. Larger ones: the chunked selective log-softmax over the
    unshifted logits (the last position's target is a dummy 0, dropped), so that the gradient is
    written once into a tensor shaped like the model's logits, never through a slice."""
    limit = chunk_elements or LOGPROB_CHUNK_ELEMENTS
    if logits.numel() <= limit:
        shifted, targets, mask = shift(logits, labels)
        return gather_logprobs(shifted, targets), mask
    targets = labels[:, 1:]
    mask = targets != IGNORE
    padded = F.pad(targets.masked_fill(~mask, 0), (0, 1))  # position seq-1 predicts nothing
    return chunked_gather_logprobs(logits, padded, limit)[:, :-1], mask


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, denominator: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the trained (response) positions: L_LM.

    `denominator`: divide the summed NLL by this count instead of this batch's trained positions
    (a piece of a micro-batch, normalised by the whole micro-batch's count)."""
    logprobs, mask = token_logprobs(logits, labels)
    nll = -logprobs
    if denominator is None:
        return (nll * mask).sum() / mask.sum().clamp(min=1)
    return (nll * mask).sum() / max(1, int(denominator))


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the target tokens' log-probs per sequence (batch,): log pi(y | x)."""
    logprobs, mask = token_logprobs(logits, labels)
    return (logprobs * mask).sum(-1)


def trained_positions(labels: list[int]) -> int:
    """How many of a sequence's positions `lm_loss` trains (targets labels[1:] that are not IGNORE)."""
    return sum(1 for label in labels[1:] if label != IGNORE)


def informative_mask(expert_argmax: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Response positions where the experts' argmax next tokens are not all equal.

    expert_argmax: (batch, seq - 1, n_experts) token ids; target_mask: (batch, seq - 1) bool.
    Where every expert would emit the same token there is nothing to route, so the routing loss
    ignores the position (the paper's "informative tokens").
    """
    disagree = (expert_argmax != expert_argmax[..., :1]).any(-1)
    return disagree & target_mask


def routing_loss(
    routing_logits: torch.Tensor,
    expert_gold_logprobs: torch.Tensor,
    informative: torch.Tensor,
    reading: str = "literal",
    expert_logprobs_full: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    denominator: int | None = None,
) -> torch.Tensor:
    """L_route of Eq. 2-3, averaged over informative positions (zero if there are none).

    routing_logits: (batch, seq - 1, n_experts), already aligned with the targets (position t's
    routing decides the token at t + 1). Weights are softmax(w): a convex combination.
    - literal: -sum_i w_i * log pi_i(y_t), needing only each expert's gold-token log-prob
      `expert_gold_logprobs` (batch, seq - 1, n_experts).
    - mixture: -log softmax(sum_i w_i * log pi_i(.))[y_t], the NLL of the aggregated policy of
      Eq. 2; needs the full expert log-prob tensors (batch, seq - 1, n_experts, vocab) and targets.
    `denominator`: divide by this count of informative positions (those of the whole micro-batch
    this batch is a piece of) instead of this batch's.
    """
    weights = routing_logits.float().softmax(-1)
    if reading == "literal":
        per_position = -(weights * expert_gold_logprobs).sum(-1)
    elif reading == "mixture":
        if expert_logprobs_full is None or targets is None:
            raise ValueError("the 'mixture' routing loss needs full expert log-probs and targets")
        aggregated = (weights.unsqueeze(-1) * expert_logprobs_full).sum(-2)
        per_position = -gather_logprobs(aggregated, targets)
    else:
        raise ValueError(f"unknown routing loss reading {reading!r}; choose one of {ROUTING_READINGS}")
    n = informative.sum() if denominator is None else int(denominator)
    if n == 0:
        return routing_logits.sum() * 0.0  # keeps the graph (and DDP) happy with a zero gradient
    return (per_position * informative).sum() / n


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log sigmoid(beta * (policy log-ratio - reference log-ratio) + bias), per pair (batch,).

    With `bias=None` this is standard DPO (the fine-tuned baseline). CDPO (Eq. 4) passes the
    experts' no-grad term beta * [log pi_E(y_w) - log pi_E(y_l)] as `bias`; see cdpo_bias.
    """
    margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    if bias is not None:
        margin = margin + bias.detach()
    return -F.logsigmoid(margin)


def cdpo_bias(expert_chosen: torch.Tensor, expert_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """The (Bias) term of Eq. 4: beta * [log pi_E(y_w | x) - log pi_E(y_l | x)], never differentiated."""
    return (beta * (expert_chosen - expert_rejected)).detach()


def bradley_terry_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """Reward-model loss: -log sigmoid(r(x, y_w) - r(x, y_l)), per pair."""
    return -F.logsigmoid(reward_chosen - reward_rejected)

"""The losses of FusionRoute (Eq. 2-4) and of the baselines that share its training loop.

Conventions: `logits` are (batch, seq, vocab) over the input sequence; `labels` are the input ids
with IGNORE (-100) on positions that are not trained. Position t's logits predict labels[t + 1];
`shift` aligns the two once so every loss works on (batch, seq - 1) target positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fusionroute.data import IGNORE

ROUTING_READINGS = ("literal", "mixture")


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


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the trained (response) positions: L_LM."""
    logits, targets, mask = shift(logits, labels)
    nll = -gather_logprobs(logits, targets)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the target tokens' log-probs per sequence (batch,): log pi(y | x)."""
    logits, targets, mask = shift(logits, labels)
    return (gather_logprobs(logits, targets) * mask).sum(-1)


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
) -> torch.Tensor:
    """L_route of Eq. 2-3, averaged over informative positions (zero if there are none).

    routing_logits: (batch, seq - 1, n_experts), already aligned with the targets (position t's
    routing decides the token at t + 1). Weights are softmax(w): a convex combination.
    - literal: -sum_i w_i * log pi_i(y_t), needing only each expert's gold-token log-prob
      `expert_gold_logprobs` (batch, seq - 1, n_experts).
    - mixture: -log softmax(sum_i w_i * log pi_i(.))[y_t], the NLL of the aggregated policy of
      Eq. 2; needs the full expert log-prob tensors (batch, seq - 1, n_experts, vocab) and targets.
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
    n = informative.sum()
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

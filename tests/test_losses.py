"""FusionRoute's losses against values computed by hand on small tensors."""
import math

import pytest
import torch

from fusionroute.data import IGNORE
from fusionroute.losses import (
    bradley_terry_loss,
    cdpo_bias,
    dpo_loss,
    informative_mask,
    lm_loss,
    routing_loss,
    sequence_logprob,
)


def test_lm_loss_counts_only_labelled_positions():
    # vocab 2; logits favour token 0 with log-odds ln 3 -> p(0) = 3/4, p(1) = 1/4
    logits = torch.log(torch.tensor([[[3.0, 1.0]] * 4]))
    labels = torch.tensor([[IGNORE, IGNORE, 0, 1]])  # targets at positions 2 and 3 only
    expected = (-math.log(3 / 4) - math.log(1 / 4)) / 2
    assert lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert sequence_logprob(logits, labels).item() == pytest.approx(math.log(3 / 4) + math.log(1 / 4), rel=1e-6)


def test_informative_mask_marks_disagreement_on_response_positions_only():
    argmax = torch.tensor([[[5, 5, 5], [5, 6, 5], [7, 7, 7], [1, 2, 3]]])  # (1, 4 positions, 3 experts)
    target_mask = torch.tensor([[True, True, True, False]])
    assert informative_mask(argmax, target_mask).tolist() == [[False, True, False, False]]


def test_literal_routing_loss_by_hand():
    # two positions, two experts; only position 1 is informative
    routing_logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # weights [.5,.5] and [.75,.25]
    gold = torch.tensor([[[-1.0, -2.0], [-0.5, -4.0]]])
    informative = torch.tensor([[False, True]])
    expected = -(0.75 * -0.5 + 0.25 * -4.0)
    assert routing_loss(routing_logits, gold, informative).item() == pytest.approx(expected, rel=1e-6)


def test_routing_loss_is_zero_without_informative_positions_but_keeps_graph():
    w = torch.zeros(1, 2, 3, requires_grad=True)
    loss = routing_loss(w, torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(w.grad, torch.zeros_like(w))


def test_mixture_routing_loss_by_hand():
    # one position, two experts over a vocab of 2; weights [.5, .5]
    routing_logits = torch.zeros(1, 1, 2)
    p1, p2 = torch.tensor([0.9, 0.1]), torch.tensor([0.2, 0.8])
    full = torch.stack([p1.log(), p2.log()]).view(1, 1, 2, 2)
    targets = torch.tensor([[1]])
    agg = 0.5 * p1.log() + 0.5 * p2.log()
    expected = -(agg - torch.logsumexp(agg, 0))[1]
    got = routing_loss(routing_logits, None, torch.tensor([[True]]), "mixture", full, targets)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="mixture"):
        routing_loss(routing_logits, None, torch.tensor([[True]]), "mixture")
    with pytest.raises(ValueError, match="unknown routing loss"):
        routing_loss(routing_logits, torch.zeros(1, 1, 2), torch.tensor([[True]]), "nope")


def test_dpo_and_cdpo_by_hand():
    beta = 0.1
    pc, pr, rc, rr = torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5])
    margin = beta * ((-3 + 4) - (-5 + 4.5))  # 0.15
    assert dpo_loss(pc, pr, rc, rr, beta).item() == pytest.approx(-math.log(1 / (1 + math.exp(-margin))), rel=1e-6)
    bias = cdpo_bias(torch.tensor([-2.0]), torch.tensor([-6.0]), beta)  # 0.4
    assert bias.item() == pytest.approx(0.4)
    expected = -math.log(1 / (1 + math.exp(-(margin + 0.4))))
    assert dpo_loss(pc, pr, rc, rr, beta, bias).item() == pytest.approx(expected, rel=1e-6)


def test_cdpo_bias_carries_no_gradient():
    expert_chosen = torch.tensor([-2.0], requires_grad=True)
    policy = torch.tensor([-3.0], requires_grad=True)
    bias = cdpo_bias(expert_chosen, torch.tensor([-6.0]), 0.1)
    dpo_loss(policy, torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5]), 0.1, bias).backward()
    assert expert_chosen.grad is None and policy.grad is not None


def test_bradley_terry():
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0])).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-1.0))), rel=1e-6
    )

"""FusionRoute's losses against values computed by hand on small tensors."""
import math

import pytest
import torch

from fusionroute import losses
from fusionroute.data import IGNORE
from fusionroute.losses import (
    bradley_terry_loss,
    cdpo_bias,
    chunked_gather_logprobs,
    dpo_loss,
    gather_logprobs,
    informative_mask,
    lm_loss,
    routing_loss,
    sequence_logprob,
    token_logprobs,
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_equal_the_full_ones(dtype, monkeypatch):
    """The chunked selective log-softmax (logits above LOGPROB_CHUNK_ELEMENTS) gives the same
    log-probs and the same gradients as the one-piece computation, for contiguous logits and for
    a strided view, and its gradient keeps the logits' dtype."""
    torch.manual_seed(0)
    logits = (torch.randn(3, 9, 37) * 4).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 37, (3, 9))
    labels[0, :4] = IGNORE
    labels[2, 6:] = IGNORE

    def run():
        seq = sequence_logprob(logits, labels)
        loss = lm_loss(logits, labels) + seq.square().mean()
        (grad,) = torch.autograd.grad(loss, logits)
        return seq.detach(), grad

    full_seq, full_grad = run()
    monkeypatch.setattr(losses, "LOGPROB_CHUNK_ELEMENTS", 2 * 37 + 5)  # 2 positions per chunk
    chunk_seq, chunk_grad = run()
    assert chunk_grad.dtype == dtype
    assert torch.allclose(chunk_seq, full_seq, atol=1e-5, rtol=1e-6)
    assert torch.allclose(chunk_grad.float(), full_grad.float(), atol=1e-6, rtol=1e-5)

    strided = logits[:, 1:]  # not contiguous: handled one batch row at a time
    targets = torch.randint(0, 37, (3, 8))
    direct = gather_logprobs(strided, targets)
    chunked = chunked_gather_logprobs(strided, targets, chunk_elements=3 * 37)
    assert torch.allclose(chunked, direct, atol=1e-5)
    (g1,) = torch.autograd.grad(direct.sum(), logits)
    (g2,) = torch.autograd.grad(chunked.sum(), logits)
    assert torch.allclose(g1.float(), g2.float(), atol=1e-6)


def test_chunked_logprobs_never_upcast_the_whole_logits(monkeypatch):
    """Forward and backward of the chunked path allocate no fp32 tensor as large as the bf16
    logits (the one-piece path's .float() copy is 2x their bytes)."""
    logits = torch.randn(4, 64, 512).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, 512, (4, 64))
    monkeypatch.setattr(losses, "LOGPROB_CHUNK_ELEMENTS", 16 * 512)
    biggest = []
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    biggest.append(t.numel())
            return out

    with Watch():
        loss = lm_loss(logits, labels)
        loss.backward()
    assert max(biggest) <= 16 * 512  # one chunk of fp32 logits at a time
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.shape == logits.shape


def test_token_logprobs_small_logits_take_the_exact_old_path():
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :2] = IGNORE
    logprobs, mask = token_logprobs(logits, labels)
    targets = labels[:, 1:].masked_fill(labels[:, 1:] == IGNORE, 0)
    assert torch.equal(logprobs, gather_logprobs(logits[:, :-1], targets))
    assert torch.equal(mask, labels[:, 1:] != IGNORE)


def test_denominators_let_pieces_add_up_to_the_whole():
    torch.manual_seed(1)
    logits = torch.randn(4, 6, 13)
    labels = torch.randint(0, 13, (4, 6))
    labels[1, :3] = IGNORE
    whole = lm_loss(logits, labels)
    count = int((labels[:, 1:] != IGNORE).sum())
    pieces = lm_loss(logits[:1], labels[:1], count) + lm_loss(logits[1:], labels[1:], count)
    assert pieces.item() == pytest.approx(whole.item(), rel=1e-6)

    routing = torch.randn(4, 5, 3)
    gold = -torch.rand(4, 5, 3)
    informative = torch.rand(4, 5) > 0.4
    n = int(informative.sum())
    full = routing_loss(routing, gold, informative)
    parts = routing_loss(routing[:2], gold[:2], informative[:2], denominator=n) + \
        routing_loss(routing[2:], gold[2:], informative[2:], denominator=n)
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)
    zero = torch.zeros(1, 2, 3, requires_grad=True)
    assert routing_loss(zero, torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool), denominator=0).item() == 0.0

"""Fused decoding (Eq. 1): the fast cached/grouped decoder against the no-cache, one-row oracle.

Models are tiny random Llamas (float32). Exact token-for-token equality between a padded,
cached, batched computation and an unpadded full recompute is only a fair requirement when no
decision is near a tie (float32 rounding differs by ~1e-6 between the two); the fixture therefore
asserts that every decision of the oracle on the test prompts has a clear margin (> 1e-4, a
hundred times float32 noise). If a platform's kernels ever made this fixture near-tied, that
assertion fails, not a decoding test.
"""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fusionroute.decoding import FusedOutput, fused_generate, greedy_generate
from fusionroute.decoding.decoders import _partition
from fusionroute.decoding.oracles import naive_fused_generate, reference_fused_generate, reference_greedy_generate
from fusionroute.router import RouterModel

VOCAB = 300
EXPERTS = ["math", "code", "instruct"]
PAD = 0
MAX_NEW = 16


def _llama(seed: int, vocab: int = VOCAB, hidden: int = 64, layers: int = 2, kv_heads: int = 2, attn: str = "sdpa"):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        initializer_range=0.1,  # peakier than the default 0.02: clear argmax margins
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # confident next-token distributions, like trained models
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is as fast, and does not spin when the machine is shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def models():
    router = RouterModel.from_lm(_llama(0), EXPERTS)
    with torch.no_grad():
        # a strong routing head: routing follows the hidden state and switches often
        g = torch.Generator().manual_seed(5)
        router.routing_head.weight.copy_(torch.randn(router.routing_head.weight.shape, generator=g))
    experts = [
        _llama(1),
        _llama(2, hidden=48, layers=3, kv_heads=4),  # a different architecture, same vocabulary
        _llama(3, attn="eager"),  # the eager attention path (float additive masks)
    ]
    return router, experts


def _prompts(n: int, seed: int, min_len: int = 1, max_len: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (n_tok,), generator=g).tolist() for n_tok in lens]


BATCH8 = _prompts(8, seed=1)
BATCH1 = [_prompts(1, seed=2, min_len=7, max_len=7)[0]]


@torch.inference_mode()
def _min_margins(router, experts, prompt, out: FusedOutput, use_complementary: bool) -> tuple[float, float]:
    """Smallest top-2 gap of the routing logits and of the Eq. 1 scores along the oracle's path."""
    seq, route_gap, score_gap = list(prompt), float("inf"), float("inf")
    for tok, e in zip(out.token_ids, out.expert_ids):
        r = router(torch.tensor([seq]))
        w = r.routing_logits[0, -1].topk(2).values
        route_gap = min(route_gap, float(w[0] - w[1]))
        score = torch.log_softmax(experts[e](torch.tensor([seq])).logits[0, -1], -1)
        if use_complementary:
            score = score + torch.log_softmax(r.logits[0, -1], -1)
        s = score.topk(2).values
        score_gap = min(score_gap, float(s[0] - s[1]))
        seq.append(tok)
    return route_gap, score_gap


@pytest.fixture(scope="module")
def oracle(models):
    """Reference outputs for (prompts, use_complementary), checked to be far from any tie."""
    router, experts = models
    cache = {}

    def get(name: str, use_complementary: bool, eos: int | None = None):
        key = (name, use_complementary, eos)
        if key not in cache:
            prompts = {"batch8": BATCH8, "batch1": BATCH1}[name]
            ref = reference_fused_generate(router, experts, prompts, MAX_NEW, eos, PAD, use_complementary)
            for p, o in zip(prompts, ref):
                route_gap, score_gap = _min_margins(router, experts, p, o, use_complementary)
                assert route_gap > 1e-4 and score_gap > 1e-4, "fixture too close to a tie for exact checks"
            cache[key] = ref
        return cache[key]

    return get


def _as_tuples(outs: list[FusedOutput]):
    return [(o.token_ids, o.expert_ids) for o in outs]


@pytest.mark.parametrize("use_complementary", [True, False])
@pytest.mark.parametrize("name", ["batch1", "batch8"])
def test_fast_matches_reference(models, oracle, name, use_complementary):
    router, experts = models
    prompts = {"batch8": BATCH8, "batch1": BATCH1}[name]
    ref = oracle(name, use_complementary)
    fast = fused_generate(router, experts, prompts, MAX_NEW, None, PAD, use_complementary)
    assert _as_tuples(fast) == _as_tuples(ref)
    assert all(len(o.token_ids) == MAX_NEW for o in fast)
    # each step: one router forward + one expert forward per row (catch-ups ride along)
    assert [o.forwards for o in fast] == [2 * MAX_NEW] * len(prompts)


def test_routing_really_switches(oracle):
    """Without this the equality tests would prove little: all experts are used, rows switch often."""
    for use_complementary in (True, False):
        ids = [e for o in oracle("batch8", use_complementary) for e in o.expert_ids]
        assert set(ids) == {0, 1, 2}
        switches = sum(
            a != b for o in oracle("batch8", use_complementary) for a, b in zip(o.expert_ids, o.expert_ids[1:])
        )
        assert switches >= 0.2 * len(ids)
    assert len(set(oracle("batch1", True)[0].expert_ids)) >= 2
    # complementary logits change the output
    assert _as_tuples(oracle("batch8", True)) != _as_tuples(oracle("batch8", False))


@pytest.mark.parametrize("overhead_tokens", [0, 10**6])
def test_fast_matches_reference_any_partition(models, oracle, overhead_tokens):
    """overhead 0: every distinct catch-up length gets its own forward (many single-row, in-place
    forwards); huge overhead: one padded forward per expert per step."""
    router, experts = models
    fast = fused_generate(router, experts, BATCH8, MAX_NEW, None, PAD, True, overhead_tokens=overhead_tokens)
    assert _as_tuples(fast) == _as_tuples(oracle("batch8", True))


def test_naive_matches_fast(models, oracle):
    router, experts = models
    naive = naive_fused_generate(router, experts, BATCH8, MAX_NEW, None, PAD)
    assert _as_tuples(naive) == _as_tuples(oracle("batch8", True))
    assert [o.forwards for o in naive] == [(1 + len(experts)) * MAX_NEW] * len(BATCH8)


def test_eos_stops_rows_independently(models, oracle):
    router, experts = models
    full = oracle("batch8", True)
    # an eos that some rows emit mid-way: those rows stop there (eos included), the others run on
    eos = full[0].token_ids[4]
    expected = []
    for o in full:
        cut = o.token_ids.index(eos) + 1 if eos in o.token_ids else len(o.token_ids)
        expected.append((o.token_ids[:cut], o.expert_ids[:cut]))
    lengths = {len(t) for t, _ in expected}
    assert len(lengths) >= 2 and min(lengths) < MAX_NEW  # rows really finish at different steps
    ref = reference_fused_generate(router, experts, BATCH8, MAX_NEW, eos, PAD)
    assert _as_tuples(ref) == expected
    fast = fused_generate(router, experts, BATCH8, MAX_NEW, eos, PAD)
    assert _as_tuples(fast) == expected
    assert [o.forwards for o in fast] == [2 * len(t) for t, _ in expected]
    naive = naive_fused_generate(router, experts, BATCH8, MAX_NEW, eos, PAD)
    assert _as_tuples(naive) == expected


def test_greedy_generate_matches_no_cache_reference(models):
    _, experts = models
    for model in experts:
        ref = reference_greedy_generate(model, BATCH8, MAX_NEW, None)
        assert greedy_generate(model, BATCH8, MAX_NEW, None, PAD) == ref
        assert all(len(t) == MAX_NEW for t in ref)
        # eos: rows stop at their first eos (included)
        eos = ref[0][3]
        expected = [t[: t.index(eos) + 1] if eos in t else t for t in ref]
        assert greedy_generate(model, BATCH8, MAX_NEW, eos, PAD) == expected
        assert reference_greedy_generate(model, BATCH8, MAX_NEW, eos) == expected


def test_greedy_generate_matches_hf_generate(models):
    """Batch-1 sanity check against transformers' own greedy generate."""
    _, experts = models
    model = experts[0]
    prompt = BATCH8[0]
    hf = model.generate(
        torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=PAD, eos_token_id=None
    )
    assert greedy_generate(model, [prompt], MAX_NEW, None, PAD)[0] == hf[0, len(prompt) :].tolist()


def test_vocab_mismatch_is_refused(models):
    router, experts = models
    odd = _llama(7, vocab=VOCAB + 8)
    for fn in (fused_generate, reference_fused_generate, naive_fused_generate):
        with pytest.raises(ValueError, match=rf"router vocab size {VOCAB}.*code={VOCAB + 8}"):
            fn(router, [experts[0], odd, experts[2]], BATCH1, 4, None, PAD)


def test_expert_count_mismatch_is_refused(models):
    router, experts = models
    with pytest.raises(ValueError, match="3 experts"):
        fused_generate(router, experts[:2], BATCH1, 4, None, PAD)


def test_edge_cases(models):
    router, experts = models
    assert _as_tuples(fused_generate(router, experts, BATCH8, 0, None, PAD)) == [([], [])] * len(BATCH8)
    assert fused_generate(router, experts, [], 4, None, PAD) == []
    # no pad token: padded slots are masked anyway
    ref = reference_fused_generate(router, experts, BATCH8[:3], 4, None, None)
    assert _as_tuples(fused_generate(router, experts, BATCH8[:3], 4, None, None)) == _as_tuples(ref)
    with pytest.raises(ValueError, match="empty"):
        fused_generate(router, experts, [[5], []], 4, None, PAD)
    with pytest.raises(ValueError, match="empty"):
        greedy_generate(experts[0], [[]], 4, None, PAD)


def test_partition():
    # equal lengths: one forward
    assert _partition([1, 1, 1, 1], overhead_tokens=16) == [[0, 1, 2, 3]]
    # one long catch-up among short ones: split off when padding would cost more than a forward
    assert sorted(map(sorted, _partition([1, 40, 1, 1], overhead_tokens=16))) == [[0, 2, 3], [1]]
    assert _partition([1, 40, 1, 1], overhead_tokens=10**6) == [[0, 2, 3, 1]]
    # no overhead: one forward per distinct length
    assert sorted(map(sorted, _partition([3, 1, 3, 2], overhead_tokens=0))) == [[0, 2], [1], [3]]


def test_a_late_first_use_is_stored_aligned_and_stays_exact():
    """A row that first uses an expert after the others (its first tokens came from another expert)
    is stored ending where the other rows end, so the next step runs on the in-place cache path;
    the logits still equal a full recompute."""
    from fusionroute.decoding.cache import _lm_call, _RowCache

    model = _llama(7)
    call, cpu = _lm_call(model), torch.device("cpu")
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    cache = _RowCache(model, 3, capacity=20, align_end=4)
    cache.run(call, [0, 1], [prompts[0], prompts[1]], PAD, cpu)  # left-padded prefill: both end at 4
    cache.run(call, [0, 1], [[20], [21]], PAD, cpu)
    cache.run(call, [2], [prompts[2] + [22]], PAD, cpu)  # row 2's first use, one step late
    assert cache.end == [5, 5, 5]
    logits = cache.run(call, [0, 1, 2], [[30], [31], [32]], PAD, cpu)  # contiguous, same end: in place
    assert cache.end == [6, 6, 6]
    full = [prompts[0] + [20, 30], prompts[1] + [21, 31], prompts[2] + [22, 32]]
    for row, seq in enumerate(full):
        with torch.no_grad():
            expected = model(torch.tensor([seq])).logits[0, -1]
        assert torch.allclose(logits[row], expected, atol=1e-4)

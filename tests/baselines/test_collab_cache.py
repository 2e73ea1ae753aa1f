"""Collab with KV caches (Collab.generate) against the original re-encoding loop (Collab.reference_generate).

Both must agree on everything: emitted tokens, expert ids, forward accounting, and at every step
every candidate's token, lookahead, lookahead forwards and reward (the log-probs up to float
rounding: cached and uncached forwards differ in the last bits). Checked on the exact bigram
experts of test_collab_selection and on small random Llamas (hidden 64: well-separated logits, no
near-ties with these seeds), with rows that stop at different steps and an output layer wider than
the shared vocabulary. A last test checks the point of the caches: after the prompts' prefill,
every expert forward reads one new token per row.
"""
from __future__ import annotations

import pytest
import torch

from baseline_helpers import TEMPLATE, bigram_expert, density_reward_model, tiny_llama_config
from baselines.collab import Collab, CollabParams
from baselines.reward import RewardScorer
from fusionroute.data import render_prompt
from fusionroute.vocab import SharedVocabulary

BIGRAMS = {
    "E0": {"*": {"a": 10, "b": 9}, "a": {"a": 10}, "b": {"7": 10}, "7": {"7": 10}},
    "E1": {"*": {"c": 10, "d": 5}, "c": {"</s>": 10}},
    "E2": {"*": {"7": 10}},
    "E3": {"*": {"a": 10, "7": 9}},
}
PROMPTS = [render_prompt(TEMPLATE, x) for x in (
    "Add 3 and 4.", "Write a poem about the sea. The sea is blue and wide.", "def add(a, b):")]


def run_both(gen: Collab, prompts: list[str], max_new_tokens: int):
    ref_trace, new_trace = [], []
    ref = gen.reference_generate(prompts, max_new_tokens, trace=ref_trace)
    new = gen.generate(prompts, max_new_tokens, trace=new_trace)
    return ref, new, ref_trace, new_trace


def assert_same(ref, new, ref_trace, new_trace) -> None:
    for a, b in zip(ref, new, strict=True):
        assert (b.text, b.token_ids, b.expert_ids, b.forwards, b.extra) == (
            a.text, a.token_ids, a.expert_ids, a.forwards, a.extra)
    assert len(new_trace) == len(ref_trace)
    for step_ref, step_new in zip(ref_trace, new_trace):
        assert len(step_new) == len(step_ref)
        for c_ref, c_new in zip(step_ref, step_new):
            for key in ("logprob", "kl"):  # cached and uncached forwards differ in the last bits
                assert c_new[key] == pytest.approx(c_ref[key], abs=1e-4)
            exact = {k: v for k, v in c_ref.items() if k not in ("logprob", "kl")}
            assert {k: v for k, v in c_new.items() if k not in ("logprob", "kl")} == exact


# --------------------------------------------------------------------------------------------
# exact bigram experts


@pytest.fixture(scope="module")
def bigram_world(tokenizer):
    experts = {name: bigram_expert(tokenizer, table, seed=k) for k, (name, table) in enumerate(BIGRAMS.items())}
    scorer = RewardScorer(density_reward_model(tokenizer), tokenizer, prompt_template=TEMPLATE)
    return experts, scorer


@pytest.mark.parametrize("names,top_k,lookahead,weight", [
    (("E0", "E1"), 2, 0, 1e-3),
    (("E0", "E1"), 2, 1, 1e-3),
    (("E0", "E1"), 2, 3, 1e-3),
    (("E0", "E1"), 2, 1, 100.0),  # c wins, then EOS: the row stops at step 2
    (("E3", "E1"), 2, 0, 0.0),
    (("E0", "E1", "E2", "E3"), 3, 4, 0.5),
    (("E2",), 1, 2, 1.0),
])
def test_cached_matches_reference_on_bigram_experts(bigram_world, tokenizer, names, top_k, lookahead, weight):
    experts, scorer = bigram_world
    gen = Collab([experts[n] for n in names], tokenizer, scorer, CollabParams(top_k=top_k, lookahead=lookahead,
                                                                             weight=weight))
    ref, new, ref_trace, new_trace = run_both(gen, PROMPTS, 6)
    assert_same(ref, new, ref_trace, new_trace)
    assert any(out.token_ids for out in new)


def test_cached_bigram_outputs_are_the_documented_ones(bigram_world, tokenizer):
    """The expectations of test_collab_selection, through the cached path, with the trace."""
    experts, scorer = bigram_world
    gen = Collab([experts["E0"], experts["E1"]], tokenizer, scorer, CollabParams(top_k=2, lookahead=3, weight=1e-3))
    trace: list = []
    out = gen.generate(PROMPTS[:1], 4, trace=trace)[0]
    assert out.text == "b777" and out.expert_ids == [0] * 4
    first = {tokenizer.decode([c["token"]]): (c["lookahead"], c["lookahead_forwards"]) for c in trace[0]}
    seven, a = tokenizer.convert_tokens_to_ids("7"), tokenizer.convert_tokens_to_ids("a")
    c = tokenizer.convert_tokens_to_ids("c")
    assert first == {"a": ([a] * 3, 3), "b": ([seven] * 3, 3), "c": ([], 1), "d": ([c], 2)}
    assert out.extra["forwards_per_token"][0] == 2 + (3 + 3 + 1 + 2) + 4


def test_edge_cases(bigram_world, tokenizer):
    experts, scorer = bigram_world
    gen = Collab([experts["E0"], experts["E1"]], tokenizer, scorer, CollabParams(top_k=2, lookahead=2))
    assert gen.generate([], 5) == [] == gen.reference_generate([], 5)
    out = gen.generate(PROMPTS[:2], 0)
    assert [(o.token_ids, o.forwards) for o in out] == [([], 0), ([], 0)]
    # top_k beyond the vocabulary: every token is a candidate
    wide = Collab([experts["E2"]], tokenizer, scorer, CollabParams(top_k=10_000, lookahead=1),
                  vocab=SharedVocabulary(size=40, stop_ids=(tokenizer.eos_token_id,), masked={}))
    assert_same(*run_both(wide, PROMPTS[:1], 2))


# --------------------------------------------------------------------------------------------
# small random Llamas


@pytest.fixture(scope="module")
def llama_world(tokenizer):
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    experts = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        # 8 output rows beyond the shared vocabulary (a padded output layer): masked everywhere
        cfg = tiny_llama_config(tokenizer, hidden=64, layers=2, initializer_range=0.2, vocab_size=len(tokenizer) + 8)
        experts.append(LlamaForCausalLM(cfg).eval())
    torch.manual_seed(9)
    rm = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1, initializer_range=0.2)).eval()
    return experts, RewardScorer(rm, tokenizer, prompt_template=TEMPLATE)


def _vocab(tokenizer, stops) -> SharedVocabulary:
    return SharedVocabulary(size=len(tokenizer), stop_ids=tuple(sorted(stops)), masked={})


MANY_STOPS = tuple(range(100, 140))  # rows then stop at different steps, some lookaheads end early


@pytest.mark.parametrize("top_k,lookahead,weight,many_stops", [
    (2, 0, 1.0, False),
    (2, 3, 1.0, False),  # a lookahead emits the pad id at its end (see baselines.collab._as_greedy_with_steps)
    (3, 5, 0.1, False),
    (1, 4, 0.0, False),
    (2, 3, 1.0, True),
    (3, 5, 0.1, True),
])
def test_cached_matches_reference_on_random_llamas(llama_world, tokenizer, top_k, lookahead, weight, many_stops):
    experts, scorer = llama_world
    stops = MANY_STOPS + (tokenizer.eos_token_id,) if many_stops else (tokenizer.eos_token_id,)
    gen = Collab(experts, tokenizer, scorer, CollabParams(top_k=top_k, lookahead=lookahead, weight=weight),
                 vocab=_vocab(tokenizer, stops))
    ref, new, ref_trace, new_trace = run_both(gen, PROMPTS, 8)
    assert_same(ref, new, ref_trace, new_trace)
    assert len(set(tuple(o.expert_ids) for o in new)) > 1  # the experts really collaborate
    assert all(t < len(tokenizer) for o in new for t in o.token_ids)
    if many_stops:  # rows finish at different steps (one before its first token)
        lengths = [len(o.token_ids) for o in new]
        assert len(set(lengths)) > 1 and min(lengths) < 8


@pytest.mark.parametrize("alpha,many_stops", [(0.5, False), (2.0, True)])
def test_cached_matches_reference_with_kl_term(llama_world, bigram_world, tokenizer, alpha, many_stops):
    """The reference policy of the KL term rides in the engines as one more cached model: both
    engines agree on it too (the trace's kl to float rounding)."""
    experts, scorer = llama_world
    stops = MANY_STOPS + (tokenizer.eos_token_id,) if many_stops else (tokenizer.eos_token_id,)
    gen = Collab(experts[:2], tokenizer, scorer, CollabParams(top_k=2, lookahead=3, weight=0.0, alpha=alpha),
                 vocab=_vocab(tokenizer, stops), reference=experts[2])
    ref, new, ref_trace, new_trace = run_both(gen, PROMPTS, 8)
    assert_same(ref, new, ref_trace, new_trace)
    assert all(c["kl"] > 0 for step in new_trace for c in step)
    assert any(out.token_ids for out in new)
    bigrams, bigram_scorer = bigram_world
    gen = Collab([bigrams["E0"], bigrams["E1"]], tokenizer, bigram_scorer,
                 CollabParams(top_k=2, lookahead=2, weight=0.0, alpha=alpha), reference=bigrams["E3"])
    assert_same(*run_both(gen, PROMPTS, 6))


def test_cached_collab_reads_each_token_once(llama_world, tokenizer):
    """After the prompts' prefill, every expert forward reads one new token per row: the
    proposal forwards the last emitted token, the lookahead the candidate, then its own tokens."""
    experts, scorer = llama_world
    B, K, L, T = 2, 2, 3, 5
    gen = Collab(experts, tokenizer, scorer, CollabParams(top_k=K, lookahead=L),
                 vocab=_vocab(tokenizer, [tokenizer.eos_token_id]))
    shapes: dict[int, list[tuple[int, int]]] = {e: [] for e in range(len(experts))}

    def recorder(e):
        def hook(_module, _args, kwargs):
            shapes[e].append(tuple(kwargs["input_ids"].shape))
        return hook

    handles = [m.register_forward_pre_hook(recorder(e), with_kwargs=True) for e, m in enumerate(experts)]
    try:
        trace: list = []
        outs = gen.generate(PROMPTS[:B], T, trace=trace)
        cached = {e: list(s) for e, s in shapes.items()}
        for s in shapes.values():
            s.clear()
        gen.reference_generate(PROMPTS[:B], T)
        reference_tokens = sum(r * c for s in shapes.values() for r, c in s)
    finally:
        for h in handles:
            h.remove()
    assert all(len(o.token_ids) == T for o in outs)
    assert all(c["token"] != tokenizer.eos_token_id and c["lookahead_forwards"] == L for step in trace for c in step)
    # BOS + prompt, left-padded to the longest
    width = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in PROMPTS[:B])
    for e in range(len(experts)):
        # step 1: prefill (B, width), then L lookahead steps over the B*K candidates; later steps
        # a (B, 1) proposal forward first
        expected = [(B, width)] + [(B * K, 1)] * L + ([(B, 1)] + [(B * K, 1)] * L) * (T - 1)
        assert cached[e] == expected
    cached_tokens = sum(r * c for s in cached.values() for r, c in s)
    assert reference_tokens > 5 * cached_tokens

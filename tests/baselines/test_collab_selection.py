"""Sequence Selection and Collab on real tiny models with KNOWN behaviour.

Experts are exact bigram Llamas (baseline_helpers.bigram_expert); the reward model is a real tiny
LlamaForSequenceClassification whose reward grows with the share of "7" tokens in the text.
"""
from __future__ import annotations


import pytest

from baseline_helpers import TEMPLATE, bigram_expert, density_reward_model, save_model, token_id
from baselines.collab import Collab, CollabParams
from baselines.reward import RewardScorer
from baselines.sequence_selection import SequenceSelection, greedy_with_steps
from fusionroute.data import render_prompt
from fusionroute.generation import MethodContext, build_generator, run_generation

# E0: a first, b second; b leads to 7s.  E1: c then EOS (d second).  E2: always 7.  E3: a first, 7 second.
TABLES = {
    "E0": {"*": {"a": 10, "b": 9}, "a": {"a": 10}, "b": {"7": 10}, "7": {"7": 10}},
    "E1": {"*": {"c": 10, "d": 5}, "c": {"</s>": 10}},
    "E2": {"*": {"7": 10}},
    "E3": {"*": {"a": 10, "7": 9}},
}
PROMPTS = [render_prompt(TEMPLATE, "Add 3 and 4."), render_prompt(TEMPLATE, "Write a poem about the sea.")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("collab_world")
    experts = {name: bigram_expert(tokenizer, table, seed=k) for k, (name, table) in enumerate(TABLES.items())}
    dirs = {name: save_model(m, tokenizer, root / name) for name, m in experts.items()}
    rm_dir = save_model(density_reward_model(tokenizer), tokenizer, root / "rm")
    scorer = RewardScorer.from_pretrained(rm_dir, prompt_template=TEMPLATE)
    return experts, dirs, rm_dir, scorer


def _ids(tokenizer, text):
    return [token_id(tokenizer, ch) for ch in text]


def test_bigram_experts_behave_as_designed(world, tokenizer):
    experts, *_ = world
    prompt_ids = [[tokenizer.bos_token_id] + tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]]
    out = {n: greedy_with_steps(m, prompt_ids, 5, tokenizer.eos_token_id, tokenizer.pad_token_id) for n, m in experts.items()}
    assert out["E0"] == ([_ids(tokenizer, "aaaaa")], [5])
    assert out["E1"] == ([_ids(tokenizer, "c")], [2])  # c, then EOS: two forwards
    assert out["E2"] == ([_ids(tokenizer, "77777")], [5])


def test_sequence_selection_picks_rewarded_expert(world, tokenizer):
    experts, _, _, scorer = world
    gen = SequenceSelection([experts["E0"], experts["E2"], experts["E1"]], tokenizer, scorer)
    outs = gen.generate(PROMPTS, max_new_tokens=6)
    for out in outs:
        assert out.extra["chosen_expert"] == 1
        assert out.text == "777777" and out.expert_ids == [1] * 6
        r = out.extra["rewards"]
        assert r[1] > r[0] and r[1] > r[2]
        # E0: 6 steps, E2: 6 steps, E1: 2 steps (c + EOS), plus 3 reward-model forwards
        assert out.forwards == 6 + 6 + 2 + 3
    # without the 7-writer nobody scores: the tie goes to the first expert
    outs = SequenceSelection([experts["E1"], experts["E0"]], tokenizer, scorer).generate(PROMPTS[:1], 4)
    assert outs[0].extra["chosen_expert"] == 0 and outs[0].text == "c"


def test_collab_emits_rewarded_token_from_top_k(world, tokenizer):
    experts, _, _, scorer = world
    pair = [experts["E3"], experts["E1"]]
    out = Collab(pair, tokenizer, scorer, CollabParams(top_k=2, lookahead=0, weight=0.0)).generate(PROMPTS[:1], 4)[0]
    assert out.text == "7777" and out.expert_ids == [0] * 4  # E3's second choice, every step
    out = Collab(pair, tokenizer, scorer, CollabParams(top_k=1, lookahead=0, weight=0.0)).generate(PROMPTS[:1], 4)[0]
    assert "7" not in out.text  # not proposed, cannot be emitted


def test_collab_lookahead_and_weight(world, tokenizer):
    experts, _, _, scorer = world
    pair = [experts["E0"], experts["E1"]]
    # No lookahead: nothing distinguishes candidates but the log-prob -> E1's c, then its EOS.
    out = Collab(pair, tokenizer, scorer, CollabParams(top_k=2, lookahead=0, weight=1e-3)).generate(PROMPTS[:1], 5)[0]
    assert out.text == "c" and out.expert_ids == [1]
    # One token of lookahead shows that b leads to 7: b, then 7s.
    out = Collab(pair, tokenizer, scorer, CollabParams(top_k=2, lookahead=1, weight=1e-3)).generate(PROMPTS[:1], 5)[0]
    assert out.text == "b7777" and out.expert_ids == [0] * 5
    # A large weight on the log-prob overrides the reward.
    out = Collab(pair, tokenizer, scorer, CollabParams(top_k=2, lookahead=1, weight=100.0)).generate(PROMPTS[:1], 5)[0]
    assert out.text == "c"


def test_collab_defaults_are_the_papers():
    """Collab Sec. 5: p = 10 tokens per agent, alpha = 1; no log-prob term in J (Sec. 3.4)."""
    p = CollabParams()
    assert (p.top_k, p.alpha, p.weight) == (10, 1.0, 0.0)


def test_collab_kl_term_prefers_the_agent_closest_to_the_reference(world, tokenizer):
    """J_j = Q_j - alpha * KL(pi_j || pi_ref): the KL is a per-agent offset. With pi_ref = E1,
    E1's own KL is 0 and E3's is large, so a large alpha hands every step to E1."""
    experts, _, _, scorer = world
    pair = [experts["E3"], experts["E1"]]
    reward_only = Collab(pair, tokenizer, scorer, CollabParams(top_k=2, lookahead=0, weight=0.0, alpha=100.0))
    assert reward_only.generate(PROMPTS[:1], 4)[0].text == "7777"  # no reference: no KL term
    gen = Collab(pair, tokenizer, scorer, CollabParams(top_k=2, lookahead=0, weight=0.0, alpha=100.0),
                 reference=experts["E1"])
    trace: list = []
    out = gen.generate(PROMPTS[:1], 4, trace=trace)[0]
    assert out.text == "c" and out.expert_ids == [1]
    kl = {c["expert"]: c["kl"] for c in trace[0]}
    assert kl[1] == pytest.approx(0.0, abs=1e-5) and kl[0] > 0.1
    # one reference forward more per step: 2 proposals + 1 reference + 4 reward-model calls
    assert out.extra["forwards_per_token"][0] == 2 + 1 + 4
    small = Collab(pair, tokenizer, scorer, CollabParams(top_k=2, lookahead=0, weight=0.0, alpha=1e-6),
                   reference=experts["E1"])
    assert small.generate(PROMPTS[:1], 4)[0].text == "7777"  # the reward still decides when alpha is small


def test_collab_forward_accounting_and_batching(world, tokenizer):
    experts, _, _, scorer = world
    pair = [experts["E0"], experts["E1"]]
    gen = Collab(pair, tokenizer, scorer, CollabParams(top_k=2, lookahead=3, weight=1e-3))
    both = gen.generate(PROMPTS, 4)
    alone = [gen.generate([p], 4)[0] for p in PROMPTS]
    for b, a in zip(both, alone):
        assert (b.text, b.token_ids, b.expert_ids, b.forwards) == (a.text, a.token_ids, a.expert_ids, a.forwards)
    out = both[0]
    assert out.text == "b777"
    fpt = out.extra["forwards_per_token"]
    assert len(fpt) == 4 and out.forwards == sum(fpt)
    # step 1: 2 proposals; candidates a, b (E0) and c, d (E1): lookaheads a->aaa (3), b->777 (3),
    # c->EOS (1 forward), d->c EOS (2 forwards); 4 reward-model calls.
    assert fpt[0] == 2 + (3 + 3 + 1 + 2) + 4
    assert all(f <= 2 + 4 * 3 + 4 for f in fpt)


def test_registered_builders_and_run_generation(world, tokenizer, tok_dir, tmp_path):
    _, dirs, rm_dir, _ = world
    inputs = {"experts": [dirs["E0"], dirs["E1"]], "reward_model": rm_dir}
    ctx = MethodContext(kind="collab", inputs=inputs, params={"top_k": 2, "lookahead": 1, "weight": 1e-3,
                                                              "prompt_template": TEMPLATE}, tokenizer=str(tok_dir))
    samples = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    rows = run_generation(build_generator(ctx), samples, tmp_path / "collab.jsonl", batch_size=2, max_new_tokens=5,
                          settings={"m": "collab"})
    assert [r["completion"] for r in rows] == ["b7777", "b7777"]
    assert all(r["forwards"] == sum(r["forwards_per_token"]) for r in rows)
    ctx = MethodContext(kind="sequence_selection", inputs={"experts": [dirs["E0"], dirs["E2"]], "reward_model": rm_dir},
                        params={}, tokenizer=str(tok_dir))  # no template anywhere: the RM sees the full prompt
    outs = build_generator(ctx).generate(PROMPTS, 3)
    assert [o.extra["chosen_expert"] for o in outs] == [1, 1]
    with pytest.raises(ValueError, match="unknown params"):
        build_generator(MethodContext(kind="collab", inputs=inputs, params={"topk": 2}, tokenizer=str(tok_dir)))
    # the optional reference policy of the KL term
    ctx = MethodContext(kind="collab", inputs={"experts": [dirs["E3"], dirs["E1"]], "reward_model": rm_dir,
                                               "reference": dirs["E1"]},
                        params={"top_k": 2, "lookahead": 0, "weight": 0.0, "alpha": 100.0,
                                "prompt_template": TEMPLATE}, tokenizer=str(tok_dir))
    gen = build_generator(ctx)
    assert gen.reference is not None and gen.params.alpha == 100.0
    assert [o.text for o in gen.generate(PROMPTS, 4)] == ["c", "c"]


def test_builder_refuses_experts_with_another_tokenizer(world, tmp_path, tokenizer):
    from fusionroute.tiny.tokenizer import train_tokenizer

    _, dirs, rm_dir, _ = world
    other_dir = tmp_path / "other_tok"
    other = train_tokenizer(["zebra quartz " * 50, "xylophone " * 30], vocab_size=290, out_dir=other_dir)
    model = bigram_expert(other, {"*": {"a": 5}})
    odd = save_model(model, other, tmp_path / "odd_expert")
    ctx = MethodContext(kind="sequence_selection", inputs={"experts": [dirs["E0"], odd], "reward_model": rm_dir},
                        params={}, tokenizer=dirs["E0"])
    with pytest.raises(ValueError, match="share one vocabulary token for token.*odd_expert"):
        build_generator(ctx)


@pytest.mark.parametrize("kind", ["sequence_selection", "collab"])
def test_reward_model_sees_the_question_in_its_own_chat_format(world, tmp_path, kind):
    """A hub reward model (its own tokenizer and chat template, no saved prompt template) is given
    the question, not the policies' Alpaca-wrapped prompt, as the user turn."""
    import torch
    from transformers import LlamaForSequenceClassification

    from baseline_helpers import tiny_llama_config
    from fusionroute.tiny.tokenizer import train_tokenizer

    _, dirs, _, _ = world
    rm_tok = train_tokenizer(["[USER] how many apples [ASSISTANT] seven " * 30, "the sea is wide " * 20],
                             vocab_size=290, out_dir=tmp_path / "rm_tok")
    rm_tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                            "{% endfor %}")
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(tiny_llama_config(rm_tok, num_labels=1))
    rm_dir = save_model(rm, rm_tok, tmp_path / "hub_rm")
    ctx = MethodContext(kind=kind, inputs={"experts": [dirs["E0"], dirs["E2"]], "reward_model": rm_dir},
                        params={"top_k": 1, "lookahead": 1} if kind == "collab" else {},
                        tokenizer=dirs["E0"], prompt_template=TEMPLATE)
    gen = build_generator(ctx)
    seen: list[str] = []
    score = gen.scorer.score

    def recording_score(prompts, responses):
        seen.extend(prompts)
        return score(prompts, responses)

    gen.scorer.score = recording_score
    gen.generate(PROMPTS, max_new_tokens=2)
    assert set(seen) == {"Add 3 and 4.", "Write a poem about the sea."}
    text = gen.scorer.tokenizer.decode(gen.scorer.encode("Add 3 and 4.", "7"))
    assert text.startswith("<|user|>Add 3 and 4.") and "<|assistant|>7" in text and "### Instruction" not in text
    assert gen.scorer.tokenizer.get_vocab() != gen.tokenizer.get_vocab()   # its own tokenizer

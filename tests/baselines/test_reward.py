"""Reward model: scoring from text (template and chat formats, padding-proof pooling) and BT training."""
from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from transformers import LlamaForCausalLM

from baseline_helpers import TEMPLATE, density_reward, density_reward_model, save_model, tiny_llama_config, token_id
from baselines.reward import (RewardScorer, RewardTrainConfig, instruction_from_prompt, split_pairs,
                              train_reward_model)
from fusionroute.data import render_prompt
from fusionroute.training import OptimConfig


@pytest.fixture(scope="module")
def density_rm_dir(tmp_path_factory, tokenizer):
    return save_model(density_reward_model(tokenizer), tokenizer, tmp_path_factory.mktemp("density_rm"))


def _f(scorer, prompt, response, seven):
    ids = scorer.encode(prompt, response)
    return sum(i == seven for i in ids) / len(ids)


def test_scorer_known_reward_and_batching(density_rm_dir, tokenizer):
    scorer = RewardScorer.from_pretrained(density_rm_dir, prompt_template=TEMPLATE, batch_size=3)
    assert scorer.fmt == "template"
    seven = token_id(tokenizer, "7")
    prompts = ["Add 3 and 4.", "Say hi.", "Add 3 and 4.", "x", "Write a poem about the sea and the cat."]
    responses = ["The answer is: 7", "hi", "7 7 7", "the mat", "The sea is blue 77 and wide"]
    scores = scorer.score(prompts, responses)
    ids = scorer.encode(prompts[0], responses[0])
    # BOS + templated prompt + response + EOS, exactly as the RM was trained
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[1:-1]) == render_prompt(TEMPLATE, prompts[0]) + responses[0]
    for p, r, s in zip(prompts, responses, scores):
        assert s == pytest.approx(density_reward(_f(scorer, p, r, seven)), abs=1e-4)
    singles = [scorer.score([p], [r])[0] for p, r in zip(prompts, responses)]
    assert scores == pytest.approx(singles, abs=1e-5)
    assert scores[2] > scores[0] > scores[1]
    assert scorer.calls == 2 * len(prompts)
    # pad token == EOS (Llama-3 style): pooling must still read the last real token
    tok2 = copy.deepcopy(scorer.tokenizer)
    tok2.pad_token = tok2.eos_token
    model2 = copy.deepcopy(scorer.model)
    model2.config.pad_token_id = tok2.eos_token_id
    scorer2 = RewardScorer(model2, tok2, fmt="template", prompt_template=TEMPLATE, batch_size=5)
    assert scorer2.score(prompts, responses) == pytest.approx(scores, abs=1e-5)


def test_scorer_chat_template_format(density_rm_dir, tmp_path, tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(density_rm_dir)  # now a hub-like RM with its own chat template
    try:
        scorer = RewardScorer.from_pretrained(density_rm_dir)
        assert scorer.fmt == "chat"
        ids = scorer.encode("Add 3 and 4.", "7 7")
        assert tok.decode(ids) == "<s>user: Add 3 and 4.\n<s>assistant: 7 7\n"
        f = _f(scorer, "Add 3 and 4.", "7 7", token_id(tokenizer, "7"))
        assert scorer.score(["Add 3 and 4."], ["7 7"])[0] == pytest.approx(density_reward(f), abs=1e-4)
    finally:
        tokenizer.save_pretrained(density_rm_dir)


def test_instruction_from_prompt():
    prompt = render_prompt(TEMPLATE, "Add 3 and 4.\nThen stop.")
    assert instruction_from_prompt(TEMPLATE, prompt) == "Add 3 and 4.\nThen stop."
    with pytest.raises(ValueError):
        instruction_from_prompt(TEMPLATE, "no template here")


GOOD = ["blue", "wide", "sea", "poem", "the", "is"]
BAD = ["dog", "ran", "park", "mat", "the", "is"]


def toy_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        length = rng.randint(3, 8)
        pairs.append({
            "instruction": f"Write about item {rng.randint(0, 99)}.",
            "chosen": " ".join(rng.choice(GOOD) for _ in range(length)),
            "rejected": " ".join(rng.choice(BAD) for _ in range(rng.randint(3, 8))),
        })
    return pairs


def test_split_pairs_is_seeded_and_disjoint():
    pairs = toy_pairs(50)
    a_train, a_held = split_pairs(pairs, 0.2, seed=1)
    b_train, b_held = split_pairs(pairs, 0.2, seed=1)
    assert a_held == b_held and len(a_held) == 10 and len(a_train) == 40
    assert not {id(p) for p in a_train} & {id(p) for p in a_held}


def test_train_reward_model_learns_preferences(tmp_path, tokenizer):
    torch.manual_seed(0)
    base_dir = save_model(LlamaForCausalLM(tiny_llama_config(tokenizer, hidden=32, layers=2)), tokenizer,
                          tmp_path / "base")
    pairs = toy_pairs(160)
    out = tmp_path / "rm"
    metrics = train_reward_model(base_dir, pairs, TEMPLATE, out, OptimConfig(steps=40, batch_size=16, lr=3e-3),
                                 RewardTrainConfig(max_len=64, heldout_fraction=0.25))
    assert metrics["n_heldout"] == 40
    assert metrics["heldout_accuracy"] >= 0.9, metrics
    assert json.loads((out / "reward_metrics.json").read_text())["heldout_accuracy"] == metrics["heldout_accuracy"]
    # the saved RM dir loads where a hub id would go, with the template it was trained with
    scorer = RewardScorer.from_pretrained(str(out))
    assert scorer.fmt == "template" and scorer.prompt_template == TEMPLATE
    _, held = split_pairs(pairs, 0.25, seed=0)
    chosen = scorer.score([p["instruction"] for p in held], [p["chosen"] for p in held])
    rejected = scorer.score([p["instruction"] for p in held], [p["rejected"] for p in held])
    acc = sum(c > r for c, r in zip(chosen, rejected)) / len(held)
    assert acc == pytest.approx(metrics["heldout_accuracy"], abs=1 / len(held) + 1e-9)
    print("RM metrics:", {k: metrics[k] for k in ("heldout_accuracy", "heldout_accuracy_before", "train_accuracy")})


def test_reward_cli_writes_model_and_metrics(tmp_path, tokenizer):
    from baselines.reward import main
    from fusionroute.io import write_jsonl

    torch.manual_seed(0)
    base_dir = save_model(LlamaForCausalLM(tiny_llama_config(tokenizer, hidden=32, layers=1)), tokenizer, tmp_path / "b")
    write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(20))
    main(["--base", base_dir, "--pairs", str(tmp_path / "pairs.jsonl"), "--template", TEMPLATE, "--out",
          str(tmp_path / "rm"), "--optim", json.dumps({"steps": 2, "batch_size": 4, "lr": 1e-3}),
          "--config", json.dumps({"max_len": 48, "heldout_fraction": 0.2})])
    metrics = json.loads((tmp_path / "rm" / "reward_metrics.json").read_text())
    assert metrics["n_heldout"] == 4 and metrics["optim"]["steps"] == 2
    assert RewardScorer.from_pretrained(str(tmp_path / "rm")).prompt_template == TEMPLATE


def _domain_pairs(n: int) -> list[dict]:
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append({"domain": "math", "instruction": f"Add {i} and 3.", "chosen": f"{i} + 3 = {i + 3}. The answer is: {i + 3}",
                        "rejected": f"{i} + 3 = {i + 4}. The answer is: {i + 4}"})
        else:
            out.append({"domain": "code", "instruction": f"Write f returning {i}.",
                        "chosen": f"```python\ndef f():\n    return {i}\n```", "rejected": f"```python\ndef f():\n    return {i + 1}\n```"})
    return out


def test_offtopic_pairs_take_another_domains_answer():
    from baselines.reward import offtopic_pairs

    pairs = _domain_pairs(20)
    extra = offtopic_pairs(pairs, 1.0, seed=0)
    assert len(extra) == 20 and extra == offtopic_pairs(pairs, 1.0, seed=0)
    by_instruction = {p["instruction"]: p for p in pairs}
    answers = {p["chosen"]: p for p in pairs}
    for e in extra:
        own = by_instruction[e["instruction"]]
        assert e["chosen"] == own["chosen"]
        assert answers[e["rejected"]]["domain"] != own["domain"]  # another domain's (correct) answer
    assert len(offtopic_pairs(pairs, 0.5, seed=0)) == 10 and offtopic_pairs(pairs, 0.0, seed=0) == []
    undomained = [{k: v for k, v in p.items() if k != "domain"} for p in pairs]
    assert all(e["rejected"] != by_instruction[e["instruction"]]["chosen"] for e in offtopic_pairs(undomained, 1.0, 1))
    with pytest.raises(ValueError, match="offtopic_ratio"):
        offtopic_pairs(pairs, -1.0, seed=0)


def test_reward_model_learns_relevance_from_offtopic_pairs(tmp_path, tokenizer):
    torch.manual_seed(0)
    base_dir = save_model(LlamaForCausalLM(tiny_llama_config(tokenizer, hidden=32, layers=2)), tokenizer,
                          tmp_path / "base")
    metrics = train_reward_model(base_dir, _domain_pairs(80), TEMPLATE, tmp_path / "rm",
                                 OptimConfig(steps=40, batch_size=16, lr=3e-3),
                                 RewardTrainConfig(max_len=64, heldout_fraction=0.25, offtopic_ratio=1.0))
    assert metrics["n_train"] == 120  # 60 preference pairs + 60 relevance pairs; held-out ones stay out
    assert metrics["heldout_offtopic_accuracy"] >= 0.9, metrics
    plain = train_reward_model(base_dir, _domain_pairs(8), TEMPLATE, tmp_path / "rm0",
                               OptimConfig(steps=1, batch_size=4, lr=1e-3), RewardTrainConfig(max_len=64))
    assert plain["heldout_offtopic_accuracy"] is None

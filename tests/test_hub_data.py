"""Hub-world data and models, exercised offline: files in the hub datasets' schemas go through the
same `datasets.load_dataset` call a hub id does, and a model directory stands in for a hub id."""
from __future__ import annotations

import json
import os

import pytest

from fusionroute.hub_data import (
    HubDataError,
    load_rows,
    normalize_preference,
    normalize_sft,
    preference_subset,
    sft_subsets,
)
from fusionroute.io import read_json, read_jsonl, write_json, write_jsonl
from fusionroute.steps import run_step

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def openhermes_row(i: int) -> dict:
    """One row in argilla/OpenHermesPreferences' schema (chosen/rejected are message lists)."""
    prompt = f"Question number {i}: what is {i} + {i}?"
    return {
        "source": "airoboros2.2", "category": "orca", "prompt": prompt,
        "candidates_completions": [f"{2 * i}", "no idea"], "candidate_policies": ["a", "b"],
        "ranks": [0, 1], "rank_str": "a > b", "chosen_policy": "a", "rejected_policy": "b",
        "chosen": [{"content": prompt, "role": "user"}, {"content": f"It is {2 * i}.", "role": "assistant"}],
        "rejected": [{"content": prompt, "role": "user"}, {"content": "No idea.", "role": "assistant"}],
    }


def sharegpt_row(i: int) -> dict:
    return {"conversations": [{"from": "system", "value": "You are helpful."},
                              {"from": "human", "value": f"Say the number {i}."},
                              {"from": "gpt", "value": f"{i}"},
                              {"from": "human", "value": "Again?"}, {"from": "gpt", "value": f"{i} again"}]}


# ---- normalisation ------------------------------------------------------------------------------


def test_sft_schemas():
    assert normalize_sft({"instruction": "Add", "input": "1 and 2", "output": "3"}) == \
        {"instruction": "Add\n\n1 and 2", "response": "3"}
    assert normalize_sft({"prompt": "P", "completion": "C"}) == {"instruction": "P", "response": "C"}
    assert normalize_sft(sharegpt_row(7)) == {"instruction": "Say the number 7.", "response": "7"}
    assert normalize_sft(sharegpt_row(7), system="prepend")["instruction"] == "You are helpful.\n\nSay the number 7."
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    assert normalize_sft(chat) == {"instruction": "Hi", "response": "Hello"}
    # unusable rows are skipped, rows in no schema are an error naming the keys
    assert normalize_sft({"messages": [{"role": "user", "content": "Hi"}]}) is None
    assert normalize_sft({"instruction": " ", "response": "x"}) is None
    with pytest.raises(HubDataError, match="question"):
        normalize_sft({"question": "q", "answer": "a"})


def test_preference_schemas():
    assert normalize_preference(openhermes_row(3)) == \
        {"instruction": "Question number 3: what is 3 + 3?", "chosen": "It is 6.", "rejected": "No idea."}
    no_prompt = {k: v for k, v in openhermes_row(3).items() if k != "prompt"}
    assert normalize_preference(no_prompt)["instruction"] == "Question number 3: what is 3 + 3?"
    assert normalize_preference({"instruction": "Q", "chosen": "good", "rejected": "bad"}) == \
        {"instruction": "Q", "chosen": "good", "rejected": "bad"}
    assert normalize_preference({"prompt": "Q", "chosen": "same", "rejected": "same"}) is None
    with pytest.raises(HubDataError):
        normalize_preference({"prompt": "Q", "response": "x"})


# ---- loading: local files and the hub code path ---------------------------------------------------


def test_hub_code_path_on_a_local_folder(tmp_path):
    """A folder of parquet/JSONL files where a hub id goes: `datasets.load_dataset(id, split=...)`."""
    folder = tmp_path / "OpenHermesPreferences" / "data"
    folder.mkdir(parents=True)
    write_jsonl(folder / "train-00000-of-00001.jsonl", [openhermes_row(i) for i in range(40)])
    rows = load_rows({"hub_id": str(folder.parent), "split": "train", "n": 10})
    assert len(rows) == 40 and type(rows).__name__ == "Dataset"
    pairs, stats = preference_subset(rows, 10, seed=1)
    assert len(pairs) == 10 and stats["unusable"] == 0
    again, _ = preference_subset(rows, 10, seed=1)
    other, _ = preference_subset(rows, 10, seed=2)
    assert again == pairs and other != pairs
    assert all(p["chosen"].startswith("It is") and p["rejected"] == "No idea." for p in pairs)
    with pytest.raises(HubDataError, match="could not load"):
        load_rows({"hub_id": str(tmp_path / "missing_owner" / "missing_set")})


def test_parquet_and_missing_files(tmp_path):
    import pandas as pd

    path = tmp_path / "blend.parquet"
    pd.DataFrame([{"instruction": f"i{k}", "response": f"r{k}"} for k in range(12)]).to_parquet(path)
    rows = load_rows({"path": str(path)})
    assert len(rows) == 12 and normalize_sft(dict(rows[3])) == {"instruction": "i3", "response": "r3"}
    with pytest.raises(HubDataError, match="not found"):
        load_rows({"path": str(tmp_path / "perfectblend.jsonl")})
    with pytest.raises(HubDataError, match="exactly one"):
        load_rows({"path": str(path), "hub_id": "x/y"})


def test_sft_holdout_is_disjoint_and_stable():
    rows = [sharegpt_row(i) for i in range(60)] + [{"messages": []}] * 5  # 5 unusable rows
    train, holdout, mix, stats = sft_subsets(rows, n=30, test_holdout=10, seed=0)
    assert len(train) == 30 and len(holdout) == 10 and mix == []
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in holdout}
    more, holdout2, _, _ = sft_subsets(rows, n=None, test_holdout=10, seed=0)
    assert holdout2 == holdout                         # the hold-out does not depend on n
    assert len(more) == 50 and stats["rows"] == 65     # n=None: every usable row
    with pytest.raises(HubDataError, match="hold-out"):
        sft_subsets(rows[:5], n=3, test_holdout=10, seed=0)


def test_mix_training_sft_set_is_disjoint_from_the_sft_set():
    """Paper: 500 held out, 200k sampled for SFT and 100k for mix training from the rest."""
    rows = [sharegpt_row(i) for i in range(60)]
    train, holdout, mix, stats = sft_subsets(rows, n=30, test_holdout=10, seed=0, mix_n=15)
    ids = [{r["id"] for r in part} for part in (train, holdout, mix)]
    assert [len(i) for i in ids] == [30, 10, 15] and stats["mix"] == 15
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # adding the mix set changes neither the hold-out nor the SFT set
    train2, holdout2, _, _ = sft_subsets(rows, n=30, test_holdout=10, seed=0)
    assert (train2, holdout2) == (train, holdout)
    with pytest.raises(HubDataError, match="mix_n"):
        sft_subsets(rows, n=30, test_holdout=10, seed=0, mix_n=25)


# ---- workflow steps -------------------------------------------------------------------------------


def test_hub_data_and_general_steps(tmp_path):
    sft_file = tmp_path / "perfectblend.jsonl"
    write_jsonl(sft_file, [sharegpt_row(i) for i in range(50)])
    pref_dir = tmp_path / "prefs"
    pref_dir.mkdir()
    write_jsonl(pref_dir / "train.jsonl", [openhermes_row(i) for i in range(30)])
    out = {k: str(tmp_path / f"{k}.jsonl") for k in ("sft_mix", "holdout", "preferences")}
    out["stats"] = str(tmp_path / "stats.json")
    run_step("hub_data", {}, out, {"seed": 0, "sft": {"path": str(sft_file), "n": 20, "test_holdout": 8},
                                   "preferences": {"hub_id": str(pref_dir), "n": 12}})
    sft, holdout, prefs = read_jsonl(out["sft_mix"]), read_jsonl(out["holdout"]), read_jsonl(out["preferences"])
    assert (len(sft), len(holdout), len(prefs)) == (20, 8, 12)
    assert set(sft[0]) == {"id", "instruction", "response"}
    assert set(prefs[0]) == {"id", "instruction", "chosen", "rejected"}
    assert read_json(out["stats"])["preferences"]["pairs"] == 12

    general = tmp_path / "general.jsonl"
    run_step("general_prompts", {"holdout": out["holdout"]}, {"data": str(general)},
             {"source": "hub", "n": 5, "seed": 0, "evaluated": {}})
    rows = read_jsonl(general)
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in holdout[:5]]


def _correct_answer(reference: dict) -> str:
    record = reference["record"]
    if reference["benchmark"] == "gsm8k":
        return "Let me compute.\nThe answer is: " + record["answer"].split("####")[-1].strip()
    return f"The answer is: {record['answer']}"


def test_tiny_general_set_and_verifier_judge(tmp_path):
    from fusionroute.tiny.general import make_general
    from fusionroute.tiny.tasks import make_benchmark

    rows = make_general(10, seed=0, evaluated={"gsm8k": 6, "math500": 4})
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    assert [r["reference"]["benchmark"] for r in rows[:5]] == ["gsm8k", "math500", "mbpp", "humaneval", "ifeval"]
    evaluated = {json.dumps(r, sort_keys=True) for r in make_benchmark("gsm8k", 6, 0)}
    for row in rows:
        record = {k: v for k, v in row["reference"]["record"].items() if k != "id"}
        if row["reference"]["benchmark"] == "gsm8k":
            assert json.dumps(record, sort_keys=True) not in evaluated  # held out from the scored items
            assert int(row["reference"]["record"]["id"]) >= 6

    # Judge step: A answers the two math items correctly, B does not -> A wins both.
    data = tmp_path / "general.jsonl"
    run_step("general_prompts", {}, {"data": str(data)},
             {"source": "tiny", "n": 2, "seed": 0, "evaluated": {"gsm8k": 6, "math500": 4}, "level": None})
    general = read_jsonl(data)
    write_jsonl(tmp_path / "a.jsonl", [{"id": r["id"], "prompt": "p", "completion": _correct_answer(r["reference"]),
                                        "n_tokens": 5} for r in general])
    write_jsonl(tmp_path / "b.jsonl", [{"id": r["id"], "prompt": "p", "completion": "The answer is: 123456789",
                                        "n_tokens": 5} for r in general])
    result_path = tmp_path / "judge" / "fusionroute_vs_finetuned.json"
    run_step("judge", {"general": str(data), "a": str(tmp_path / "a.jsonl"), "b": str(tmp_path / "b.jsonl")},
             {"result": str(result_path)},
             {"family": "tiny", "method": "fusionroute", "against": "finetuned",
              "judge": {"backend": "verifier", "workers": 2, "malformed_retries": 1,
                        "verifier": {"partial_credit": True}}})
    result = read_json(result_path)
    assert (result["wins"], result["losses"], result["win_rate"]) == (2, 0, 1.0)
    assert result["label"] == {"a": "fusionroute", "b": "finetuned", "family": "tiny"}

    # Figure step: one family, two methods -> PDF and PNG.
    other = tmp_path / "judge" / "collab_vs_finetuned.json"
    write_json(other, {"win_rate": 0.25})
    run_step("figure", {"tiny__fusionroute": str(result_path), "tiny__collab": str(other)},
             {"pdf": str(tmp_path / "fig3.pdf"), "png": str(tmp_path / "fig3.png")},
             {"kind": "fig3", "families": ["tiny"], "methods": ["fusionroute", "sequence_selection", "collab"],
              "labels": {"collab": "Collab"}})
    assert (tmp_path / "fig3.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "fig3.png").read_bytes()[:4] == b"\x89PNG"


def test_openai_judge_settings_from_config(monkeypatch):
    from fusionroute.steps.judge import build_judge

    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    judge = build_judge({"backend": "openai", "openai": {"model": "gpt-4o", "base_url": "http://127.0.0.1:9/v1",
                                                          "api_key_env": "MY_JUDGE_KEY", "temperature": 0.0,
                                                          "max_tokens": 64, "model_env": "JUDGE_MODEL"}})
    assert judge.settings()["model"] == "gpt-4o" and judge.base_url == "http://127.0.0.1:9/v1"
    assert "sk-test" not in json.dumps(judge.settings())


# ---- a model directory where a hub id goes ----------------------------------------------------------


def test_model_directory_in_place_of_hub_id(tmp_path, tokenizer, tokenizer_dir):
    from model_fixtures import make_llama

    from fusionroute.experts import ExpertPool
    from fusionroute.models import load_causal_lm

    dirs = []
    for seed, name in enumerate(["math", "coding", "instruction"]):
        directory = tmp_path / f"MergeBench--gemma-2-2b-it_{name}"
        make_llama(tokenizer, seed).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        dirs.append(str(directory))
    pool = ExpertPool.load(["math", "coding", "instruction"], dirs, dirs[2], dtype="bfloat16")
    assert len(pool.models) == 3 and pool.models[0].dtype.__str__() == "torch.bfloat16"
    assert len(pool.tokenizer) == len(tokenizer)
    model = load_causal_lm({"path": dirs[0]}, "float32", "cpu")
    assert model.config.vocab_size == len(tokenizer)
    # an expert whose vocabulary differs is refused, naming it
    other = tmp_path / "other"
    from fusionroute.tiny.tokenizer import train_tokenizer

    small = train_tokenizer(["completely different text " * 20], vocab_size=300, out_dir=tmp_path / "tok2")
    make_llama(small, 5).save_pretrained(other)
    small.save_pretrained(other)
    with pytest.raises(ValueError, match="'coding'"):
        ExpertPool.load(["math", "coding"], [dirs[0], str(other)], dirs[0])

"""Loaders, ids, seeded subsets and instruction texts of the five benchmarks."""
from __future__ import annotations

import pytest

from eval_data import GSM8K, HUB_SCHEMA, IFEVAL, MATH500, MBPP, write_jsonl
from fusionroute.eval.benchmarks import (
    BENCHMARKS, DataError, instruction_for, load_records, subset)


def test_registry_matches_contracts():
    assert set(BENCHMARKS) == {"gsm8k", "math500", "mbpp", "humaneval", "ifeval"}
    assert {n: s.primary_metric for n, s in BENCHMARKS.items()} == {
        "gsm8k": "accuracy", "math500": "accuracy", "mbpp": "pass@1", "humaneval": "pass@1",
        "ifeval": "prompt_level_strict_acc"}
    assert {n: s.paper_n for n, s in BENCHMARKS.items()} == {
        "gsm8k": 400, "math500": 500, "mbpp": 500, "humaneval": 164, "ifeval": 400}
    assert BENCHMARKS["gsm8k"].hub_id == "openai/gsm8k"


@pytest.mark.parametrize("name,expected_ids", [
    ("gsm8k", ["0", "1", "2", "3"]),
    ("math500", [r["unique_id"] for r in MATH500]),
    ("mbpp", [str(r["task_id"]) for r in MBPP]),
    ("ifeval", [str(r["key"]) for r in IFEVAL]),
])
def test_local_jsonl_ids(tmp_path, name, expected_ids):
    path = write_jsonl(tmp_path / f"{name}.jsonl", HUB_SCHEMA[name])
    records = load_records(name, str(path))
    assert [r["id"] for r in records] == expected_ids
    assert all(set(orig) <= set(rec) for orig, rec in zip(HUB_SCHEMA[name], records))


def test_humaneval_ships_offline():
    records = load_records("humaneval")
    assert len(records) == 164
    assert records[0]["id"] == "HumanEval/0" and records[0]["entry_point"] == "has_close_elements"


def test_seeded_subset_is_deterministic_ordered_and_keeps_gsm8k_row_ids(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(50)]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    a = load_records("gsm8k", path, n=10, seed=3)
    b = load_records("gsm8k", path, n=10, seed=3)
    c = load_records("gsm8k", path, n=10, seed=4)
    assert [r["id"] for r in a] == [r["id"] for r in b] != [r["id"] for r in c]
    assert [int(r["id"]) for r in a] == sorted(int(r["id"]) for r in a)
    assert all(r["question"] == f"q{r['id']}" for r in a)
    assert len(load_records("gsm8k", path, n=500, seed=0)) == 50
    assert len(load_records("humaneval", n=None)) == 164
    assert [r["id"] for r in load_records("humaneval", n=20, seed=1)] == [
        r["id"] for r in subset(load_records("humaneval"), 20, 1)]


def test_instruction_for_matches_contracts():
    assert instruction_for("gsm8k", GSM8K[0]) == GSM8K[0]["question"]
    assert instruction_for("math500", MATH500[0]) == MATH500[0]["problem"]
    assert instruction_for("ifeval", IFEVAL[0]) == IFEVAL[0]["prompt"]
    assert instruction_for("mbpp", MBPP[2]) == (
        "Write a function to find the perimeter of a square.\n"
        "Your code should pass these tests:\n"
        "assert square_perimeter(10)==40\nassert square_perimeter(5)==20\n"
        "assert square_perimeter(4)==16")
    he = load_records("humaneval")[0]
    assert instruction_for("humaneval", he) == (
        "Complete the following Python function.\n```python\n" + he["prompt"] + "```")


@pytest.mark.parametrize("rows,message", [
    ([{"question": "q"}], "lacks"),
    ([{"question": "q", "answer": "#### 1"}, "not an object"], "JSON object"),
])
def test_schema_errors(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) and r.startswith("{") else
                              __import__("json").dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=message):
        load_records("gsm8k", path)


def test_invalid_json_and_duplicates_and_missing_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_records("gsm8k", bad)
    dup = write_jsonl(tmp_path / "dup.jsonl", [MBPP[0], MBPP[0]])
    with pytest.raises(DataError, match="duplicate id"):
        load_records("mbpp", dup)
    with pytest.raises(DataError, match="not found"):
        load_records("mbpp", tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown benchmark"):
        load_records("nope", None)
    with pytest.raises(DataError, match="unknown benchmark"):
        instruction_for("nope", {})


def test_hub_path_fails_clearly_offline(tmp_path):
    """The real `datasets.load_dataset` path, run offline: a clear DataError, not a traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    code = ("from fusionroute.eval.benchmarks import load_records, DataError\n"
            "try:\n    load_records('mbpp')\nexcept DataError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert "google-research-datasets/mbpp" in out.stdout and "--data" in out.stdout, out.stderr

"""score_benchmark and the fusionroute-score CLI end to end (real subprocesses, real files)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from eval_data import GSM8K, IFEVAL, MATH500, MBPP, write_jsonl
from fusionroute.eval.benchmarks import load_records
from fusionroute.eval.scoring import ScoringInputError, main, score_benchmark, wilson_interval

CLI = [sys.executable, "-c", "import sys; from fusionroute.eval.scoring import main; "
                             "sys.exit(main())"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def _check_schema(scores: dict, benchmark: str, metric: str, n: int) -> None:
    assert {"benchmark", "metric", "score", "n", "metrics", "ci95", "samples"} <= set(scores)
    assert (scores["benchmark"], scores["metric"], scores["n"]) == (benchmark, metric, n)
    assert scores["metrics"][metric] == scores["score"]
    lo, hi = scores["ci95"]
    assert 0.0 <= lo <= scores["score"] <= hi <= 1.0
    assert len(scores["samples"]) == n
    assert all(isinstance(s["correct"], bool) and "id" in s for s in scores["samples"])


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (0, 0, 0.0, 1.0),
    (82, 164, 0.4244, 0.5756),
])
def test_wilson_interval(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx([lo, hi], abs=1e-4)


def test_humaneval_cli_canonical_is_perfect_and_empty_bodies_score_zero(tmp_path):
    records = load_records("humaneval")
    canonical = write_jsonl(tmp_path / "canon.jsonl", [
        {"id": r["id"], "prompt": "p", "completion": r["canonical_solution"], "n_tokens": 1}
        for r in records])
    empty = write_jsonl(tmp_path / "empty.jsonl", [
        {"id": r["id"], "completion": "    pass\n"} for r in records])
    out_good, out_empty = tmp_path / "good.json", tmp_path / "empty.json"
    start = time.monotonic()
    proc = _cli("--benchmark", "humaneval", "--generations", str(canonical), "--out",
                str(out_good))
    canonical_s = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out_good.read_text())
    _check_schema(scores, "humaneval", "pass@1", 164)
    assert scores["score"] == 1.0, [s for s in scores["samples"] if not s["correct"]][:3]
    assert all(s["status"] == "passed" for s in scores["samples"])
    proc = _cli("--benchmark", "humaneval", "--generations", str(empty), "--out", str(out_empty))
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out_empty.read_text())
    assert scores["score"] == 0.0 and scores["n"] == 164
    assert {s["status"] for s in scores["samples"]} == {"failed"}
    print(f"humaneval CLI canonical: {canonical_s:.1f}s")


def test_gsm8k_cli(tmp_path):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    gens = write_jsonl(tmp_path / "gen.jsonl", [
        {"id": "0", "completion": "48/2 = 24. 48 + 24 = 72.\nThe answer is: 72"},
        {"id": "1", "completion": "She earns 10 dollars."},                 # flexible only
        {"id": "2", "completion": "The answer is: 4"},                      # wrong
        {"id": "3", "completion": "#### $14,400."},
    ])
    out = tmp_path / "scores.json"
    assert main(["--benchmark", "gsm8k", "--generations", str(gens), "--data", str(data),
                 "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    _check_schema(scores, "gsm8k", "accuracy", 4)
    assert scores["score"] == 0.75 and scores["metrics"]["accuracy_strict"] == 0.5
    by_id = {s["id"]: s for s in scores["samples"]}
    assert by_id["1"]["extracted"] == "10" and by_id["1"]["extracted_strict"] is None
    assert by_id["2"]["correct"] is False and by_id["2"]["gold"] == "3"
    assert by_id["3"]["correct"] is True and by_id["3"]["gold"] == "14,400"


def test_math500_scores(tmp_path):
    gens = [{"id": MATH500[0]["unique_id"], "completion": "Sum is \\boxed{\\dfrac{3}{4}}."},
            {"id": MATH500[1]["unique_id"], "completion": "The answer is: $\\sqrt{12}$."},
            {"id": MATH500[2]["unique_id"], "completion": "\\boxed{[0, 2]}"},
            {"id": MATH500[3]["unique_id"], "completion": "Each is \\boxed{60} degrees."}]
    records = load_records("math500", write_jsonl(tmp_path / "m.jsonl", MATH500))
    scores = score_benchmark("math500", gens, records)
    _check_schema(scores, "math500", "accuracy", 4)
    assert [s["correct"] for s in scores["samples"]] == [True, True, False, True]
    assert scores["samples"][1]["judge"] == "math-verify"
    assert scores["samples"][2]["extracted"] == "[0, 2]"


def test_mbpp_cli_both_styles_and_reasons(tmp_path):
    data = write_jsonl(tmp_path / "mbpp.jsonl", MBPP)
    gens = write_jsonl(tmp_path / "gen.jsonl", [
        {"id": "11", "completion": f"```python\n{MBPP[0]['code']}\n```"},
        {"id": "12", "completion": MBPP[1]["code"]},
        {"id": "17", "completion": "```python\nimport sys\nsys.exit(0)\n```"},
        {"id": "901", "completion": "```python\ndef add_offset(x):\n    return x\n```"},
    ])
    out = tmp_path / "scores.json"
    proc = _cli("--benchmark", "mbpp", "--generations", str(gens), "--data", str(data),
                "--out", str(out), "--workers", "2", "--timeout", "5")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out.read_text())
    _check_schema(scores, "mbpp", "pass@1", 4)
    assert [s["correct"] for s in scores["samples"]] == [True, True, False, False]
    assert "SystemExit" in scores["samples"][2]["reason"]
    assert "AssertionError" in scores["samples"][3]["reason"]
    assert scores["metrics"]["sandbox_errors"] == 0
    assert scores["sandbox"]["network"]            # which isolation was in force


def test_ifeval_scores(tmp_path):
    records = load_records("ifeval", write_jsonl(tmp_path / "i.jsonl", IFEVAL))
    gens = [{"id": "1000", "completion": "The sea is wide and blue"},
            {"id": "1001", "completion": "Sure!\nthe cat sleeps. the cat eats. the cat purrs."},
            {"id": "1002", "completion": "<<Help>>\nDone. Is there anything else I can help "
                                         "with?"}]
    scores = score_benchmark("ifeval", gens, records)
    _check_schema(scores, "ifeval", "prompt_level_strict_acc", 3)
    assert [s["correct"] for s in scores["samples"]] == [True, False, True]
    assert [s["correct_loose"] for s in scores["samples"]] == [True, True, True]
    assert scores["samples"][1]["failed_instructions"] == ["change_case:english_lowercase"]
    assert scores["metrics"]["inst_level_strict_acc"] == pytest.approx(4 / 5)
    assert scores["metrics"]["prompt_level_loose_acc"] == 1.0


def test_subset_of_ids_only_when_partial_and_order_follows_generations(tmp_path):
    records = load_records("gsm8k", write_jsonl(tmp_path / "g.jsonl", GSM8K))
    gens = [{"id": "2", "completion": "3"}, {"id": 0, "completion": "72"}]
    with pytest.raises(ScoringInputError, match="2 of 4 gsm8k records have no generation"):
        score_benchmark("gsm8k", gens, records)
    scores = score_benchmark("gsm8k", gens, records, allow_partial=True)
    assert [s["id"] for s in scores["samples"]] == ["2", "0"] and scores["score"] == 1.0
    assert scores["partial"] is True and scores["missing_ids"] == ["1", "3"]


@pytest.mark.parametrize("args,message", [
    (["--benchmark", "gsm8k", "--generations", "{missing}", "--data", "{data}"],
     "generations file not found"),
    (["--benchmark", "gsm8k", "--generations", "{gens}", "--data", "{missing}"],
     "data file not found"),
    (["--benchmark", "gsm8k", "--generations", "{bad_ids}", "--data", "{data}"],
     "not in the benchmark data"),
    (["--benchmark", "gsm8k", "--generations", "{dup_ids}", "--data", "{data}"],
     "duplicate generation id"),
    (["--benchmark", "gsm8k", "--generations", "{no_completion}", "--data", "{data}"],
     "lacks 'id' or 'completion'"),
    (["--benchmark", "gsm8k", "--generations", "{bad_json}", "--data", "{data}"],
     "invalid JSON"),
])
def test_cli_errors_are_clear(tmp_path, capsys, args, message):
    paths = {
        "missing": tmp_path / "missing.jsonl",
        "data": write_jsonl(tmp_path / "data.jsonl", GSM8K),
        "gens": write_jsonl(tmp_path / "gens.jsonl", [{"id": "0", "completion": "72"}]),
        "bad_ids": write_jsonl(tmp_path / "bad.jsonl", [{"id": "99", "completion": "1"}]),
        "dup_ids": write_jsonl(tmp_path / "dup.jsonl", [{"id": "0", "completion": "1"}] * 2),
        "no_completion": write_jsonl(tmp_path / "nc.jsonl", [{"id": "0"}]),
    }
    paths["bad_json"] = tmp_path / "bj.jsonl"
    paths["bad_json"].write_text('{"id": "0", "completion": "1"}\n{nope}\n')
    argv = [a.format(**paths) for a in args] + ["--out", str(tmp_path / "o.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def test_cli_unknown_benchmark_is_a_usage_error(tmp_path):
    proc = _cli("--benchmark", "nope", "--generations", "x", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_final_line_without_newline_is_read(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", GSM8K)
    gens = tmp_path / "g.jsonl"
    gens.write_text('{"id": "0", "completion": "72"}\n{"id": "1", "completion": "10"}\n'
                    '{"id": "2", "completion": "3"}\n{"id": "3", "completion": "14400"}')
    out = tmp_path / "o.json"
    assert main(["--benchmark", "gsm8k", "--generations", str(gens), "--data", str(data),
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 4


def test_scoring_does_not_import_torch():
    code = ("import sys\nfrom fusionroute.eval import scoring, answers, code, ifeval, sandbox, "
            "benchmarks\nassert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

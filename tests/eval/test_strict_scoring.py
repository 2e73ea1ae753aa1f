"""Scoring refuses inputs it cannot score faithfully (issue 13, point 3): each case stops with a
ScoringInputError / DataError (both ValueError) whose message names the file, the line or sample
id, and what to do; a partial result only with allow_partial, and then labelled as such."""
from __future__ import annotations

import json

import pytest

from eval_data import GSM8K, MBPP, write_jsonl
from fusionroute.eval import scoring
from fusionroute.eval.benchmarks import DataError, load_records
from fusionroute.steps import run_step

GSM8K_RIGHT = [f"The answer is: {a}" for a in ("72", "10", "3", "14,400")]


def _gsm8k_files(tmp_path, n_gens: int = 4):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    gens = write_jsonl(tmp_path / "gen.jsonl", [
        {"id": str(i), "completion": GSM8K_RIGHT[i]} for i in range(n_gens)])
    return data, gens


def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = scoring.main(list(argv))
    return rc, capsys.readouterr().err


def test_point1_empty_generations_file_is_refused(tmp_path, capsys):
    data, gens = _gsm8k_files(tmp_path, n_gens=0)
    out = tmp_path / "scores.json"
    rc, err = _cli(capsys, "--benchmark", "gsm8k", "--generations", str(gens), "--data", str(data),
                   "--out", str(out))
    assert rc == 2 and not out.exists()
    assert str(gens) in err and "no generations" in err and "Traceback" not in err
    with pytest.raises(scoring.ScoringInputError, match="no generations"):
        scoring.score_benchmark("gsm8k", [], load_records("gsm8k", data))


def test_point2_missing_generations_are_refused_unless_partial_is_asked(tmp_path, capsys):
    data, gens = _gsm8k_files(tmp_path, n_gens=3)          # record "3" has no generation
    out = tmp_path / "scores.json"
    argv = ["--benchmark", "gsm8k", "--generations", str(gens), "--data", str(data),
            "--out", str(out)]
    rc, err = _cli(capsys, *argv)
    assert rc == 2 and not out.exists()
    assert str(gens) in err and "'3'" in err and "--allow-partial" in err
    with pytest.raises(ValueError, match=r"1 of 4 .*'3'") as caught:
        scoring.score_benchmark("gsm8k", scoring.read_generations(gens),
                                load_records("gsm8k", data))
    assert isinstance(caught.value, scoring.ScoringInputError)

    rc, _ = _cli(capsys, *argv, "--allow-partial")
    scores = json.loads(out.read_text())
    assert rc == 0 and scores["score"] == 1.0 and scores["n"] == 3
    assert (scores["partial"], scores["n_expected"], scores["missing_ids"]) == (True, 4, ["3"])


def test_point3_workflow_score_step_refuses_a_torn_last_line(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl",
                       [{**r, "id": str(i)} for i, r in enumerate(GSM8K[:3])])
    gens = tmp_path / "generations.jsonl"
    gens.write_text("".join(json.dumps({"id": str(i), "completion": GSM8K_RIGHT[i]}) + "\n"
                            for i in range(2)) + '{"id": "2", "compl')   # a write cut off
    out = tmp_path / "scores.json"
    with pytest.raises(ValueError, match=r"generations.jsonl:3: .*cut off"):
        run_step("score", {"generations": str(gens), "data": str(data)}, {"scores": str(out)},
                 {"benchmark": "gsm8k"})
    assert not out.exists()


def test_point4_workflow_data_file_keeps_its_gsm8k_ids(tmp_path, capsys):
    # What benchmark_data writes: a subset in dataset order, each row with its full-split id.
    rows = [{**GSM8K[i], "id": str(i)} for i in (0, 2, 3)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    assert [r["id"] for r in load_records("gsm8k", data)] == ["0", "2", "3"]
    gens = write_jsonl(tmp_path / "gen.jsonl", [{"id": str(i), "completion": GSM8K_RIGHT[i]}
                                                for i in (0, 2, 3)])
    out = tmp_path / "scores.json"
    rc, err = _cli(capsys, "--benchmark", "gsm8k", "--generations", str(gens), "--data", str(data),
                   "--out", str(out))
    assert rc == 0, err
    scores = json.loads(out.read_text())
    assert scores["score"] == 1.0
    assert [s["gold"] for s in scores["samples"]] == ["72", "3", "14,400"]
    # Rows with and without ids cannot be told apart safely: refuse.
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [rows[0], GSM8K[1]])
    with pytest.raises(DataError, match=r"mixed.jsonl: record 1 has no 'id'"):
        load_records("gsm8k", mixed)


@pytest.mark.parametrize("which", ["generations", "data"])
def test_point5_non_utf8_input_is_a_clear_error(tmp_path, capsys, which):
    data, gens = _gsm8k_files(tmp_path)
    bad = gens if which == "generations" else data
    lines = bad.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"The", b"Th\xe9", 1) if which == "generations" else \
        lines[1].replace(b"Weng", b"W\xe9ng", 1)
    bad.write_bytes(b"\n".join(lines))                        # latin-1, not UTF-8, on line 2
    rc, err = _cli(capsys, "--benchmark", "gsm8k", "--generations", str(gens), "--data", str(data),
                   "--out", str(tmp_path / "o.json"))
    assert rc == 2 and "Traceback" not in err
    assert f"{bad}:2:" in err and "UTF-8" in err and "re-encode" in err


def test_point6_oversized_code_completion_is_refused_before_running(tmp_path):
    from fusionroute.eval.benchmarks.mbpp import build_mbpp_program
    from fusionroute.eval.code import MAX_COMPLETION_CHARS, judge_code

    records = load_records("mbpp", write_jsonl(tmp_path / "mbpp.jsonl", MBPP[:2]))
    huge = "```python\n" + "x = 1\n" * (MAX_COMPLETION_CHARS // 6 + 1) + "```"
    gens = [{"id": "11", "completion": huge}, {"id": "12", "completion": MBPP[1]["code"]}]
    with pytest.raises(ValueError, match=r"'11'.*characters") as caught:
        scoring.score_benchmark("mbpp", gens, records, workers=1)
    assert isinstance(caught.value, scoring.ScoringInputError)
    # Asked for: scored as a failure without being run, and labelled.
    scores = scoring.score_benchmark("mbpp", gens, records, workers=1, allow_partial=True)
    assert [s["correct"] for s in scores["samples"]] == [False, True]
    assert "not run" in scores["samples"][0]["reason"] and scores["samples"][0]["duration_s"] == 0.0
    assert scores["partial"] is True and scores["not_run_ids"] == ["11"]
    # The judge itself never hands such a program to the sandbox either.
    [judged] = judge_code(build_mbpp_program, records[:1], [huge])
    assert not judged.correct and "not run" in judged.result.reason


def test_score_step_expects_only_the_records_the_generate_step_was_limited_to(tmp_path):
    """Collab decodes the first `limit` records (its settings.json says so): that is complete."""
    data = write_jsonl(tmp_path / "data.jsonl",
                       [{**r, "id": str(i)} for i, r in enumerate(GSM8K)])
    gens = write_jsonl(tmp_path / "generations.jsonl", [
        {"id": str(i), "completion": GSM8K_RIGHT[i]} for i in range(2)])
    out = tmp_path / "scores.json"
    step = ("score", {"generations": str(gens), "data": str(data)}, {"scores": str(out)},
            {"benchmark": "gsm8k"})
    with pytest.raises(scoring.ScoringInputError, match="2 of 4"):
        run_step(*step)
    (tmp_path / "settings.json").write_text(json.dumps({"limit": 2}))
    run_step(*step)
    scores = json.loads(out.read_text())
    assert scores["n"] == 2 and scores["score"] == 1.0 and "partial" not in scores

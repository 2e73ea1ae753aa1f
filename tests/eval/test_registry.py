"""The benchmark registry is the single source of the benchmark list, labels and dispatch:
every consumer reads it, and a benchmark registered later shows up everywhere."""
from __future__ import annotations

import json
import pkgutil

import pytest

import fusionroute.eval.benchmarks as benchmarks_pkg
from fusionroute.eval import claims, compare, scoring, tables
from fusionroute.eval.benchmarks import (
    BENCHMARKS, Benchmark, Scored, benchmark_names, get_benchmark, instruction_for, register,
    unregister)
from fusionroute.tiny import tasks

FIVE = ("gsm8k", "math500", "mbpp", "humaneval", "ifeval")


def test_registry_is_discovered_from_the_modules_in_order():
    modules = {m.name for m in pkgutil.iter_modules(benchmarks_pkg.__path__)}
    assert set(FIVE) <= modules  # one module per benchmark, named like it
    assert benchmark_names() == FIVE
    assert [b.order for b in BENCHMARKS.values()] == sorted(b.order for b in BENCHMARKS.values())
    for name in FIVE:
        module = __import__(f"fusionroute.eval.benchmarks.{name}", fromlist=["BENCHMARK"])
        assert module.BENCHMARK is get_benchmark(name)


def test_every_consumer_takes_its_list_from_the_registry():
    names = list(benchmark_names())
    assert tables.benchmarks() == names
    assert tables.columns() == [(b.name, b.label) for b in BENCHMARKS.values()]
    assert claims.paper_columns()[4:-1] == names
    assert list(tasks.BENCHMARKS) == names
    assert tasks.BENCH_DOMAIN == {b.name: b.domain for b in BENCHMARKS.values()}
    choices = next(a.choices for a in scoring._parser()._actions if a.dest == "benchmark")
    assert sorted(choices) == sorted(names)


def test_registering_twice_is_refused():
    with pytest.raises(ValueError, match="second benchmark"):
        register(Benchmark(**{**vars(get_benchmark("gsm8k")), "label": "other"}))
    with pytest.raises(ValueError, match="order 10 is taken"):
        register(Benchmark(**{**vars(get_benchmark("gsm8k")), "name": "other"}))


def _echo_score(pairs, **_):
    return Scored([{"id": g["id"], "correct": g["completion"] == rec["answer"]} for g, rec in pairs])


@pytest.fixture
def sixth():
    bench = register(Benchmark(
        name="toybench", label="Toy", domain="math", order=35, hub_id="example/toy",
        hub_config=None, split="test", id_field="qid", required_fields=("qid", "q", "answer"),
        primary_metric="accuracy", paper_n=10, instruction=lambda r: "Q: " + r["q"],
        scorer=_echo_score))
    yield bench
    unregister(bench.name)


def test_a_sixth_benchmark_shows_up_everywhere(sixth, tmp_path):
    # ordered by `order`: between mbpp (30) and humaneval (40)
    assert benchmark_names() == ("gsm8k", "math500", "mbpp", "toybench", "humaneval", "ifeval")
    assert instruction_for("toybench", {"q": "2+2?"}) == "Q: 2+2?"
    scores = scoring.score_benchmark("toybench", [{"id": "a", "completion": "4"}],
                                     [{"id": "a", "qid": "a", "q": "2+2?", "answer": "4"}])
    assert (scores["benchmark"], scores["metric"], scores["score"]) == ("toybench", "accuracy", 1.0)

    header = tables.to_markdown([tables.Row("F", "G", "m", {b: 0.5 for b in benchmark_names()})]).splitlines()[0]
    assert header == "| Family | Method | GSM8K | MATH500 | MBPP | Toy | HumanEval | IfEval | Avg |"
    assert claims.paper_columns()[4:-1] == list(benchmark_names())

    for side in ("a", "b"):
        for name in ("ifeval", "toybench", "gsm8k"):
            (tmp_path / side / name).mkdir(parents=True)
            (tmp_path / side / name / "scores.json").write_text(
                json.dumps({"samples": [{"id": "1", "correct": True}]}))
    rows = compare.compare(tmp_path / "a", tmp_path / "b")
    assert [r.benchmark for r in rows] == ["gsm8k", "toybench", "ifeval", "pooled"]

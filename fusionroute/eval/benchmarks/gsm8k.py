"""GSM8K: grade-school word problems; accuracy of the final number.

The primary metric uses the flexible extraction (the paper does not say which, and the flexible
rule is what a "The answer is: N"-trained model is judged by in practice); the strict one is
reported too, as "accuracy_strict"."""
from __future__ import annotations

from typing import Any

from fusionroute.eval.benchmarks.base import Benchmark, Pairs, Scored, TinyGenerator, register


def instruction(record: dict) -> str:
    return record["question"]


def score(pairs: Pairs, **_: Any) -> Scored:
    from fusionroute.eval.answers import gsm8k_gold, judge_gsm8k

    samples = []
    for gen, rec in pairs:
        j = judge_gsm8k(gen["completion"], rec["answer"])
        samples.append({"id": gen["id"], "correct": j.flexible_correct,
                        "correct_strict": j.strict_correct, "extracted": j.flexible_answer,
                        "extracted_strict": j.strict_answer, "gold": gsm8k_gold(rec["answer"])})
    strict = [s["correct_strict"] for s in samples]
    return Scored(samples, {"accuracy_strict": sum(map(bool, strict)) / len(strict) if strict else 0.0})


def tiny_record(problem: Any, i: int) -> dict:
    """A tiny-world problem (fusionroute.tiny.math_tasks.MathProblem) as a GSM8K row: the
    reasoning lines, then "#### answer" as in the real data. GSM8K rows have no id field."""
    return {"question": problem.text, "answer": "\n".join(problem.lines) + f"\n#### {problem.answer}"}


def _tiny() -> TinyGenerator:
    from fusionroute.tiny import math_tasks

    return TinyGenerator(sample=math_tasks.sample_gsm, record=tiny_record)


BENCHMARK = register(Benchmark(
    name="gsm8k", label="GSM8K", domain="math", order=10,
    hub_id="openai/gsm8k", hub_config="main", split="test", id_field=None,
    required_fields=("question", "answer"), primary_metric="accuracy", paper_n=400,
    instruction=instruction, scorer=score, tiny=_tiny,
))

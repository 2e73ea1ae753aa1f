"""MATH-500: competition problems with exact answers; accuracy by math_verify equivalence
(fusionroute.eval.answers.judge_math), run in a verifier process with a hard timeout."""
from __future__ import annotations

from typing import Any

from fusionroute.eval.benchmarks.base import Benchmark, Pairs, Scored, TinyGenerator, register


def instruction(record: dict) -> str:
    return record["problem"]


def score(pairs: Pairs, math_timeout_s: float = 10.0, **_: Any) -> Scored:
    from fusionroute.eval.answers import MathVerifier, judge_math

    samples = []
    with MathVerifier(hard_timeout_s=math_timeout_s) as verifier:
        for gen, rec in pairs:
            j = judge_math(gen["completion"], rec["answer"], verifier)
            samples.append({"id": gen["id"], "correct": j.correct, "extracted": j.answer,
                            "gold": rec["answer"], "judge": j.method})
    return Scored(samples)


def tiny_record(problem: Any, i: int) -> dict:
    """A tiny-world problem (fusionroute.tiny.math_tasks.MathProblem) as a MATH-500 row; its
    unique_id mimics the real "<subject>/<n>.json" ids."""
    slug = problem.subject.lower().replace(" ", "_")
    return {"problem": problem.text,
            "solution": "\n".join(problem.lines) + f"\nSo the answer is $\\boxed{{{problem.answer}}}$.",
            "answer": problem.answer, "subject": problem.subject, "level": int(problem.mlevel),
            "unique_id": f"tiny/{slug}/{i}.json"}


def _tiny() -> TinyGenerator:
    from fusionroute.tiny import math_tasks

    return TinyGenerator(sample=math_tasks.sample_math, record=tiny_record)


BENCHMARK = register(Benchmark(
    name="math500", label="MATH500", domain="math", order=20,
    hub_id="HuggingFaceH4/MATH-500", hub_config=None, split="test", id_field="unique_id",
    required_fields=("problem", "answer", "unique_id"), primary_metric="accuracy", paper_n=500,
    instruction=instruction, scorer=score, tiny=_tiny,
))

"""IFEval: prompts with verifiable formatting instructions; the primary metric is the share of
prompts whose every instruction is followed (strict), with the other three IFEval metrics
(fusionroute.eval.ifeval, the official checkers from if_verifiable) reported beside it."""
from __future__ import annotations

import random
from typing import Any

from fusionroute.eval.benchmarks.base import Benchmark, Pairs, Scored, TinyGenerator, register

PRIMARY = "prompt_level_strict_acc"


def instruction(record: dict) -> str:
    return record["prompt"]


def score(pairs: Pairs, **_: Any) -> Scored:
    from fusionroute.eval.ifeval import aggregate, judge_ifeval

    judgements = [judge_ifeval(rec, gen["completion"]) for gen, rec in pairs]
    samples = [{"id": gen["id"], "correct": j.prompt_strict, "correct_loose": j.prompt_loose,
                "instructions": j.instruction_ids, "failed_instructions": j.failed_strict,
                "failed_instructions_loose": j.failed_loose}
               for (gen, _), j in zip(pairs, judgements)]
    metrics = aggregate(judgements)
    metrics.pop(PRIMARY)   # added back by fusionroute.eval.scoring.score_benchmark
    return Scored(samples, metrics)


def _tiny() -> TinyGenerator:
    from fusionroute.tiny import instruct_tasks

    def compliable(problem: Any) -> bool:
        # keep only prompts that a compliant response exists for
        return instruct_tasks.build_response(problem, random.Random(problem.key)) is not None

    # keys 1000, 1001, ... (the numbering the tiny world has always used)
    return TinyGenerator(sample=instruct_tasks.sample_instruct,
                         record=lambda problem, i: instruct_tasks.to_ifeval_record(problem, 1000 + i),
                         accept=compliable)


BENCHMARK = register(Benchmark(
    name="ifeval", label="IfEval", domain="instruct", order=50,
    hub_id="google/IFEval", hub_config=None, split="train", id_field="key",
    required_fields=("key", "prompt", "instruction_id_list", "kwargs"), primary_metric=PRIMARY,
    paper_n=400, instruction=instruction, scorer=score, tiny=_tiny,
))

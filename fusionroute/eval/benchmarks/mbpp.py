"""MBPP (full config, test split): a task description and three asserts; pass@1 of the program
setup code + the completion's function + the asserts, run in the sandbox."""
from __future__ import annotations

import ast
import re
from typing import Any

from fusionroute.eval.benchmarks.base import Benchmark, TinyGenerator, register
from fusionroute.eval.code import extract_code, program_scorer

TESTS_HEADER = "\nYour code should pass these tests:\n"  # between the task text and its asserts
_ASSERT_CALL_RE = re.compile(r"assert\s*\(?\s*(?:not\s+)?\(?\s*(?:math\.isclose\s*\(\s*|set\s*\(\s*)?"
                             r"([A-Za-z_]\w*)\s*\(")


def instruction(record: dict) -> str:
    return f"{record['text']}{TESTS_HEADER}" + "\n".join(record["test_list"])


def mbpp_entry_point(record: dict) -> str | None:
    """The function the tests call: from the first assert, else the reference solution."""
    for test in record.get("test_list", []):
        match = _ASSERT_CALL_RE.search(test)
        if match and match.group(1) not in {"isinstance", "abs", "round", "sorted", "len"}:
            return match.group(1)
    try:
        tree = ast.parse(record.get("code", ""))
    except SyntaxError:
        return None
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    return names[-1] if names else None


def build_mbpp_program(record: dict, completion: str) -> str:
    code = extract_code(completion, mbpp_entry_point(record))
    setup = record.get("test_setup_code") or ""
    tests = "\n".join(record["test_list"])
    return f"{setup}\n{code}\n\n{tests}\n"


def tiny_record(problem: Any, i: int) -> dict:
    """A tiny-world problem (fusionroute.tiny.code_tasks.CodeProblem) as an MBPP row; task ids
    start at 11 as in the real test split."""
    return {"task_id": 11 + i, "text": problem.mbpp_text(), "code": problem.mbpp_code(),
            "test_list": problem.test_asserts(), "test_setup_code": "", "challenge_test_list": []}


def _tiny() -> TinyGenerator:
    from fusionroute.tiny import code_tasks

    return TinyGenerator(sample=code_tasks.sample_code, record=tiny_record)


BENCHMARK = register(Benchmark(
    name="mbpp", label="MBPP", domain="code", order=30,
    hub_id="google-research-datasets/mbpp", hub_config="full", split="test", id_field="task_id",
    required_fields=("task_id", "text", "test_list"), primary_metric="pass@1", paper_n=500,
    instruction=instruction, scorer=program_scorer(build_mbpp_program),
    build_program=build_mbpp_program, tiny=_tiny,
))

"""MBPP and HumanEval pass@1: turn a completion plus the benchmark's tests into one program and
run it in the sandbox (fusionroute.eval.sandbox). pass@1 with one sample per task = the
fraction of tasks whose program passes.

Completion styles accepted (docs/CONTRACTS.md):
* a fenced ```python block holding the full function -- when several blocks exist we take the
  one that defines the entry point (else the first that defines any function, else the first);
  an unterminated fence (generation cut off) counts up to the end of the text;
* HumanEval only: a bare continuation of the prompt (the function body), scored exactly like
  the official harness as prompt + completion.

HumanEval programs with a full function are built as prompt + "\\n" + code: the prompt's stub
(signature + docstring, a valid body) is immediately redefined by the model's function, while
the prompt's imports (`from typing import List`) and helper functions (HumanEval/10, /38, ...)
stay available, which a full-function answer often relies on without repeating them.

Size limit: a completion longer than MAX_COMPLETION_CHARS (1 MiB of text) is never run: it is
judged incorrect with the reason "not run: ...". Compiling a program is memory-hungry: one 50 MB
completion of short statements took a sandbox process to its 2 GB memory limit (MemoryError after
~11 s; with the default 6 s timeout, 1.4 GB when killed), once per parallel worker. No answer
within a paper-style max_new_tokens (400 tokens, a few KB) comes near the limit. The scorer
(fusionroute.eval.scoring) refuses such completions before anything runs unless a partial
result is asked for.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from fusionroute.eval.sandbox import (
    FAILED, Isolation, SandboxLimits, SandboxResult, run_programs)

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_ASSERT_CALL_RE = re.compile(r"assert\s*\(?\s*(?:not\s+)?\(?\s*(?:math\.isclose\s*\(\s*|set\s*\(\s*)?"
                             r"([A-Za-z_]\w*)\s*\(")

DEFAULT_CODE_LIMITS = SandboxLimits(timeout_s=6.0)
MAX_COMPLETION_CHARS = 1 << 20   # longer completions are not run (module doc)


def oversized(completion: str) -> bool:
    """Too long to run (MAX_COMPLETION_CHARS, counted in characters)."""
    return len(completion) > MAX_COMPLETION_CHARS


def _not_run(completion: str) -> SandboxResult:
    return SandboxResult(FAILED, None, "", "", 0.0,
                         reason=f"not run: the completion has {len(completion):,} characters, "
                                f"over the limit of {MAX_COMPLETION_CHARS:,}")


def fenced_blocks(text: str) -> list[str]:
    """Contents of ```python / ```py / ``` blocks, in order (an open final fence included)."""
    return [m.group(2) for m in _FENCE_RE.finditer(text)
            if m.group(1).lower() in _PYTHON_TAGS]


def defines(code: str, name: str | None) -> bool:
    """Whether `code` defines function `name` at line start (any indentation-free def)."""
    if name is None:
        return bool(re.search(r"^\s*(?:async\s+)?def\s+\w+\s*\(", code, re.MULTILINE))
    return bool(re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE))


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The code of a completion: the fenced block defining `entry_point` (see module doc),
    or the whole completion when it has no fenced block."""
    blocks = fenced_blocks(completion)
    if not blocks:
        return completion
    for wanted in (entry_point, None):
        for block in blocks:
            if defines(block, wanted):
                return block
    return blocks[0]


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


def build_humaneval_program(record: dict, completion: str) -> str:
    entry = record["entry_point"]
    code = extract_code(completion, entry)
    if defines(code, entry):
        body = record["prompt"] + "\n" + code
    else:
        # A bare continuation: the body goes right after the prompt's docstring.
        body = record["prompt"] + code
    return f"{body}\n\n{record['test']}\n\ncheck({entry})\n"


BUILDERS = {"mbpp": build_mbpp_program, "humaneval": build_humaneval_program}


@dataclass
class CodeJudgement:
    correct: bool
    result: SandboxResult


def judge_code(benchmark: str, records: list[dict], completions: list[str],
               limits: SandboxLimits | None = None, workers: int | None = None,
               isolation: Isolation | None = None) -> list[CodeJudgement]:
    """Build and run one program per (record, completion) pair, in parallel."""
    try:
        build = BUILDERS[benchmark]
    except KeyError:
        raise ValueError(f"{benchmark!r} is not a code benchmark ({sorted(BUILDERS)})") from None
    pairs = list(zip(records, completions, strict=True))
    # Over-long completions are neither built into a program nor run (module doc).
    runnable = [i for i, (_, c) in enumerate(pairs) if not oversized(c)]
    results = {i: _not_run(c) for i, (_, c) in enumerate(pairs) if oversized(c)}
    if runnable:
        ran = run_programs([build(*pairs[i]) for i in runnable], limits or DEFAULT_CODE_LIMITS,
                           workers=workers, isolation=isolation)
        results.update(zip(runnable, ran))
    return [CodeJudgement(results[i].passed, results[i]) for i in range(len(pairs))]

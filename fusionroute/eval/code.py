"""Code benchmarks' pass@1: a completion plus the benchmark's tests become one program (the
benchmark's `build_program`: fusionroute/eval/benchmarks/mbpp.py, humaneval.py), run in the
sandbox (fusionroute.eval.sandbox). pass@1 with one sample per task = the fraction of tasks
whose program passes. This module holds what every code benchmark shares: finding the code in
a completion, the size limit, running the programs, and the scorer.

Completion styles accepted (docs/CONTRACTS.md):
* a fenced ```python block holding the full function -- when several blocks exist we take the
  one that defines the entry point (else the first that defines any function, else the first);
  an unterminated fence (generation cut off) counts up to the end of the text;
* HumanEval only: a bare continuation of the prompt (the function body), scored exactly like
  the official harness as prompt + completion.

Size limit: a completion longer than MAX_COMPLETION_CHARS (1 MiB of text) is never run: it is
judged incorrect with the reason "not run: ...". Compiling a program is memory-hungry: one 50 MB
completion of short statements took a sandbox process to its 2 GB memory limit (MemoryError after
~11 s; with the default 6 s timeout, 1.4 GB when killed), once per parallel worker. No answer
within a paper-style max_new_tokens (400 tokens, a few KB) comes near the limit. The scorer
(fusionroute.eval.scoring) refuses such completions before anything runs unless a partial
result is asked for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fusionroute.eval.benchmarks.base import Pairs, ProgramBuilder, Scored, Scorer
from fusionroute.eval.sandbox import (
    ERROR, FAILED, Isolation, SandboxLimits, SandboxResult, detect_isolation, run_programs)

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}

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


@dataclass
class CodeJudgement:
    correct: bool
    result: SandboxResult


def judge_code(build: ProgramBuilder, records: list[dict], completions: list[str],
               limits: SandboxLimits | None = None, workers: int | None = None,
               isolation: Isolation | None = None) -> list[CodeJudgement]:
    """Build (with the benchmark's `build_program`) and run one program per (record,
    completion) pair, in parallel."""
    pairs = list(zip(records, completions, strict=True))
    # Over-long completions are neither built into a program nor run (module doc).
    runnable = [i for i, (_, c) in enumerate(pairs) if not oversized(c)]
    results = {i: _not_run(c) for i, (_, c) in enumerate(pairs) if oversized(c)}
    if runnable:
        ran = run_programs([build(*pairs[i]) for i in runnable], limits or DEFAULT_CODE_LIMITS,
                           workers=workers, isolation=isolation)
        results.update(zip(runnable, ran))
    return [CodeJudgement(results[i].passed, results[i]) for i in range(len(pairs))]


def program_scorer(build: ProgramBuilder) -> Scorer:
    """The scorer of a code benchmark whose programs `build` makes: pass@1, with the sandbox's
    status and reason per sample."""
    def score(pairs: Pairs, workers: int | None = None, timeout_s: float | None = None,
              **_: Any) -> Scored:
        limits = DEFAULT_CODE_LIMITS if timeout_s is None else SandboxLimits(timeout_s=timeout_s)
        judged = judge_code(build, [r for _, r in pairs], [g["completion"] for g, _ in pairs],
                            limits=limits, workers=workers)
        samples = [{"id": g["id"], "correct": j.correct, "status": j.result.status,
                    "reason": j.result.reason, "exit_code": j.result.exit_code,
                    "duration_s": j.result.duration_s, "stderr": j.result.stderr[-1000:]}
                   for (g, _), j in zip(pairs, judged)]
        # Harness-side failures count as wrong answers but must be visible, not silent.
        errors = sum(s["status"] == ERROR for s in samples)
        return Scored(samples, {"sandbox_errors": errors},
                      {"sandbox": detect_isolation().describe()})
    return score

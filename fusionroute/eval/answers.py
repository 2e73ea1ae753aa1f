"""Final-answer extraction and equivalence for the math benchmarks (GSM8K, MATH500).

GSM8K (numbers)
    strict   -- the number right after an explicit answer marker: "The answer is[:] N" (the style
                the tiny world trains, docs/CONTRACTS.md) or "#### N" (the dataset's own style); the
                last marker wins.
    flexible -- strict if a marker holds a number, else the last number anywhere in the text
                (lm-eval's "flexible-extract" idea).
    Numbers may carry thousands commas, a $ sign, a trailing period, a sign, decimals or a %;
    they compare as exact decimals ("18.00" == "18").

MATH500 (expressions)
    extraction -- the last \\boxed{...} (nested braces; also \\boxed 5 and \\fbox), else the
                  text after the last "The answer is[:]" on its line.
    equivalence -- (1) a Hendrycks-style normaliser (\\dfrac->\\frac, \\frac12, units, degrees,
                  \\text{}, $ delimiters, spacing, x= prefixes, ...) compared as strings and as
                  exact rationals, then (2) math-verify (sympy-based). math-verify runs in a
                  separate worker process with a hard per-item deadline, so pathological inputs
                  (sympy hanging inside C code, memory blow-ups) can neither hang nor crash the
                  scorer; on timeout the worker is killed and restarted and the item is judged by
                  the normaliser alone.
"""
from __future__ import annotations

import json
import logging
import os
import re
import select
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# GSM8K
# ----------------------------------------------------------------------------------------------
# A number as models write it: optional sign and $, digits with optional thousands commas,
# optional decimals; or a bare decimal like ".5".
_NUMBER = r"-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|-?\$?\.\d+%?"
_NUMBER_RE = re.compile(_NUMBER)
_MARKER_RE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is\s*:?|####)", re.IGNORECASE)


def normalize_number(text: str) -> Decimal | None:
    """'$1,234.50.' -> Decimal('1234.50'); None when `text` is not a single number."""
    cleaned = text.strip().rstrip(".").replace(",", "").replace("$", "").replace(" ", "")
    cleaned = cleaned.rstrip("%")
    if cleaned.startswith("-."):
        cleaned = "-0" + cleaned[1:]
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def _first_number(text: str) -> str | None:
    match = _NUMBER_RE.search(text)
    return match.group(0) if match else None


def extract_gsm8k_strict(completion: str) -> str | None:
    """The first number after the last answer marker ("The answer is:", "####")."""
    markers = list(_MARKER_RE.finditer(completion))
    for marker in reversed(markers):
        found = _first_number(completion[marker.end():marker.end() + 200])
        if found is not None:
            return found
    return None


def extract_gsm8k_flexible(completion: str) -> str | None:
    """Strict if a marker holds a number, else the last number anywhere in the completion."""
    strict = extract_gsm8k_strict(completion)
    if strict is not None:
        return strict
    numbers = _NUMBER_RE.findall(completion)
    return numbers[-1] if numbers else None


def gsm8k_gold(answer_field: str) -> str:
    """The gold number of a GSM8K `answer` field ("...reasoning... #### 72")."""
    return answer_field.split("####")[-1].strip()


def numbers_equal(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    p, g = normalize_number(pred), normalize_number(gold)
    return p is not None and g is not None and p == g


@dataclass(frozen=True)
class Gsm8kJudgement:
    strict_answer: str | None
    flexible_answer: str | None
    strict_correct: bool
    flexible_correct: bool


def judge_gsm8k(completion: str, answer_field: str) -> Gsm8kJudgement:
    gold = gsm8k_gold(answer_field)
    strict = extract_gsm8k_strict(completion)
    flexible = extract_gsm8k_flexible(completion)
    return Gsm8kJudgement(strict, flexible, numbers_equal(strict, gold),
                          numbers_equal(flexible, gold))


# ----------------------------------------------------------------------------------------------
# MATH500: extraction
# ----------------------------------------------------------------------------------------------
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS_RE = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?", re.IGNORECASE)


def _braced(text: str, start: int) -> str | None:
    """Content of the balanced {...} group opening at text[start], or None if unbalanced."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif text[i] == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}/\\fbox{...} (nested braces), or of `\\boxed 5`."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        pos = match.end()
        if pos < len(text) and text[pos] == "{":
            content = _braced(text, pos)
            if content is not None:
                return content.strip()
        elif match.group(0).endswith(" ") or match.group(0) == "\\boxed":
            bare = re.match(r"[^\s$]+", text[pos:])
            if bare:
                return bare.group(0).rstrip(".")
    return None


def extract_math_answer(completion: str) -> str | None:
    """\\boxed{} first (what the MATH solutions use), else "The answer is: X" on its line."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    markers = list(_ANSWER_IS_RE.finditer(completion))
    if not markers:
        return None
    line = completion[markers[-1].end():].strip().split("\n")[0].strip()
    line = _strip_delimiters(re.sub(r"\.\s*$", "", line).strip())
    return line or None


# ----------------------------------------------------------------------------------------------
# MATH500: normaliser
# ----------------------------------------------------------------------------------------------
_UNIT_WORDS = ("degrees", "degree", "units", "unit", "cm", "meters", "inches", "feet", "dollars",
               "cents", "square", "sq", "mph", "hours", "minutes", "seconds", "days")


def _strip_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left):len(s) - len(right)].strip()
    return s


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1b -> \\frac{1}{b}, \\frac{1}2 -> \\frac{1}{2}."""
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}", s)


def _unwrap_text(s: str) -> str:
    """\\text{Evelyn} -> Evelyn; trailing unit text (\\text{ cm}, \\mbox{ units}) removed."""
    s = re.sub(r"^(.+?)\s*\\(?:text|textbf|mbox|mathrm)\{\s*[a-zA-Z ]+\}(\^\{?[23]\}?)?$",
               lambda m: m.group(1) if re.search(r"[0-9}]", m.group(1)) else m.group(0), s)
    return re.sub(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf)\{([^{}]*)\}", r"\1", s)


def normalize_math(answer: str) -> str:
    """Canonical string form of a MATH answer (Hendrycks' strip_string plus extras)."""
    s = _strip_delimiters(answer.replace("\n", " "))
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    s = s.replace("{,}", ",").replace("\\ ", " ")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°", "", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = _unwrap_text(s)
    s = re.sub(r"\s+(?:" + "|".join(_UNIT_WORDS) + r")(\^[23])?\.?$", "", s.strip())
    s = re.sub(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)\s*(?:=|\\in)\s*(?=.)", "", s.strip())
    s = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    s = s.replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![0-9])\.(\d)", r"0.\1", s)
    s = re.sub(r"^(-?\d+)\.0+$", r"\1", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+/\d+", s):
        num, den = s.split("/")
        s = f"\\frac{{{num}}}{{{den}}}"
    if re.fullmatch(r"\([A-Za-z]\)", s):   # multiple-choice "(C)" -> "C"
        s = s[1]
    return s


def _as_rational(s: str) -> Fraction | None:
    """Exact value of a normalised simple number: 3, -0.25, \\frac{3}{4}, -\\frac{3}{4}."""
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?\d+(\.\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def normalized_equal(pred: str, gold: str) -> bool:
    """Equality under the normaliser: identical canonical strings or equal exact rationals."""
    p, g = normalize_math(pred), normalize_math(gold)
    if p == g and p != "":
        return True
    pv, gv = _as_rational(p), _as_rational(g)
    return pv is not None and gv is not None and pv == gv


# ----------------------------------------------------------------------------------------------
# MATH500: math-verify in a killable worker process
# ----------------------------------------------------------------------------------------------
def _math_verify_pair(gold: str, pred: str, timeout_s: int) -> bool:
    """math-verify on two bare answers; both are wrapped in \\boxed{} so extraction is exact."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config,
                        parsing_timeout=timeout_s)
    pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config,
                        parsing_timeout=timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


def _worker_loop() -> None:
    """Worker process body: JSON lines [gold, pred] on stdin -> true/false lines on stdout.

    Runs as its own interpreter's main thread, so math-verify's signal-based timeouts work;
    the parent adds a hard deadline on top (kill + restart)."""
    import json
    import resource
    import sys

    memory_mb, timeout_s = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    logging.disable(logging.WARNING)
    import math_verify  # noqa: F401 - pay the sympy import before announcing readiness

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        gold, pred = json.loads(line)
        try:
            answer = _math_verify_pair(gold, pred, timeout_s)
        except BaseException:  # noqa: BLE001 - a crash on one item must not end the worker
            answer = False
        out.write("true\n" if answer else "false\n")
        out.flush()


_WORKER_CMD = "import sys; from fusionroute.eval.answers import _worker_loop; _worker_loop()"


def _worker_env() -> dict[str, str]:
    """The worker must import this package even when it is used from a source checkout."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


class MathVerifier:
    """Owns one math-verify worker process (a plain subprocess speaking JSON lines, so no
    pickling and no re-import of the caller's __main__); restarts it after a hang or crash.

    `equal(gold, pred)` returns (verdict, method) where method says which judge decided:
    "normalizer", "math-verify", or "math-verify-timeout"/"math-verify-unavailable"
    (verdict then comes from the normaliser only).
    """

    def __init__(self, hard_timeout_s: float = 10.0, soft_timeout_s: int = 5,
                 memory_mb: int = 4096, startup_timeout_s: float = 120.0) -> None:
        self.hard_timeout_s = hard_timeout_s
        self.soft_timeout_s = soft_timeout_s
        self.memory_mb = memory_mb
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._broken = False

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _readline(self, timeout_s: float) -> str | None:
        """One line from the worker within `timeout_s`, else None."""
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self._proc.stdout.readline()
        return line.strip() if line else None

    def _start(self) -> bool:
        if self._broken:
            return False
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CMD, str(self.memory_mb),
                 str(self.soft_timeout_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, bufsize=1, env=_worker_env())
        except OSError as exc:
            log.warning("math-verify worker unavailable (%s); using the normaliser only", exc)
            self._broken = True
            return False
        if self._readline(self.startup_timeout_s) == "ready":
            return True
        log.warning("math-verify worker failed to start; using the normaliser only")
        self._kill()
        self._broken = True
        return False

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        self._proc = None

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._kill()

    def verify(self, gold: str, pred: str) -> bool | None:
        """math-verify's verdict, or None when it timed out/crashed/is unavailable."""
        if self._proc is None and not self._start():
            return None
        try:
            self._proc.stdin.write(json.dumps([gold, pred]) + "\n")
            self._proc.stdin.flush()
            line = self._readline(self.hard_timeout_s)
        except OSError:
            line = None
        if line in ("true", "false"):
            return line == "true"
        self._kill()
        return None

    def equal(self, gold: str, pred: str | None) -> tuple[bool, str]:
        if pred is None or not pred.strip():
            return False, "no answer"
        if normalized_equal(pred, gold):
            return True, "normalizer"
        verdict = self.verify(gold, pred)
        if verdict is None:
            state = "unavailable" if self._broken else "timeout"
            return False, f"math-verify-{state}"
        return verdict, "math-verify"


@dataclass(frozen=True)
class MathJudgement:
    answer: str | None
    correct: bool
    method: str


def judge_math(completion: str, gold: str, verifier: MathVerifier) -> MathJudgement:
    answer = extract_math_answer(completion)
    correct, method = verifier.equal(gold, answer)
    return MathJudgement(answer, correct, method)

"""Case tables for GSM8K number extraction and MATH answer extraction/equivalence."""
from __future__ import annotations

from decimal import Decimal

import pytest

from fusionroute.eval.answers import (
    MathVerifier, extract_gsm8k_flexible, extract_gsm8k_strict, extract_math_answer,
    gsm8k_gold, judge_gsm8k, judge_math, last_boxed, normalize_math, normalize_number,
    normalized_equal, numbers_equal)

# ----------------------------------------------------------------------------------------------
# GSM8K
# ----------------------------------------------------------------------------------------------
GSM8K_CASES = [
    # completion, strict extraction (normalised), flexible extraction (normalised)
    ("She has 3 apples.\nThe answer is: 18", "18", "18"),
    ("The answer is: $1,234.50.", "1234.50", "1234.50"),
    ("So the total is 5 + 7 = 12.\n#### 12", "12", "12"),
    ("#### -3", "-3", "-3"),
    ("The answer is: -3.", "-3", "-3"),
    ("The answer is 42", "42", "42"),
    ("the final answer is: 7 dollars", "7", "7"),
    ("THE ANSWER IS: 1,000,000", "1000000", "1000000"),
    ("The answer is: 0.75", "0.75", "0.75"),
    ("The answer is: .5", "0.5", "0.5"),
    ("The answer is: 50%", "50", "50"),
    ("The answer is: $ 20", "20", "20"),
    ("First 10, then 20.\nThe answer is: 30\nCheck: 10 + 20 = 30", "30", "30"),
    ("The answer is: 5. Actually no.\nThe answer is: 6", "6", "6"),     # last marker wins
    ("I computed 3 and then 4", None, "4"),                             # flexible fallback
    ("Total: $2,500.", None, "2500"),
    ("The result is 12.5 meters.", None, "12.5"),
    ("no numbers here", None, None),
    ("The answer is: unknown", None, None),
    ("Step 1: 4 * 2 = 8\nStep 2: 8 - 1 = 7", None, "7"),
    ("It costs -$5 overall.", None, "-5"),
    ("#### 72", "72", "72"),
    ("The answer is: 10,5", "10", "10"),          # not a thousands group: stops at the comma
]


@pytest.mark.parametrize("completion,strict,flexible", GSM8K_CASES)
def test_gsm8k_extraction(completion, strict, flexible):
    got_strict = extract_gsm8k_strict(completion)
    got_flexible = extract_gsm8k_flexible(completion)
    assert (normalize_number(got_strict) if got_strict else None) == (
        Decimal(strict) if strict else None)
    assert (normalize_number(got_flexible) if got_flexible else None) == (
        Decimal(flexible) if flexible else None)


@pytest.mark.parametrize("pred,gold,equal", [
    ("18", "18", True), ("18.00", "18", True), ("$18.", "18", True), ("1,080", "1080", True),
    ("-4", "4", False), ("17", "18", False), (None, "18", False), ("0.5", ".5", True),
    ("1e3", "1000", True), ("abc", "1", False),
])
def test_numbers_equal(pred, gold, equal):
    assert numbers_equal(pred, gold) is equal


def test_gsm8k_gold_and_judgement():
    answer_field = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert gsm8k_gold(answer_field) == "72"
    j = judge_gsm8k("48 + 24 = 72 clips.", answer_field)
    assert (j.strict_correct, j.flexible_correct) == (False, True)
    j = judge_gsm8k("The answer is: 72", answer_field)
    assert (j.strict_correct, j.flexible_correct) == (True, True)
    j = judge_gsm8k("The answer is: 70\nWait, 72", answer_field)
    assert (j.strict_correct, j.flexible_correct) == (False, False)


# ----------------------------------------------------------------------------------------------
# MATH: extraction
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("completion,expected", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{a^{2}+\\frac{1}{b_{1}}}", "a^{2}+\\frac{1}{b_{1}}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("$\\boxed{\\text{(C)}}$", "\\text{(C)}"),
    ("\\boxed 5.", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("The answer is: 3/4.", "3/4"),
    ("Reasoning...\nThe answer is: $2\\sqrt{3}$\n", "2\\sqrt{3}"),
    ("The answer is: \\(\\frac{1}{2}\\).", "\\frac{1}{2}"),
    ("The answer is: \\frac{3}{4}\nExtra line", "\\frac{3}{4}"),
    ("the answer is (1, 2]", "(1, 2]"),
    ("no final answer", None),
    ("\\boxed{unbalanced", None),
    ("The answer is: 5. \\boxed{6}", "6"),     # boxed takes precedence
])
def test_extract_math_answer(completion, expected):
    assert extract_math_answer(completion) == expected


def test_last_boxed_handles_escaped_braces():
    assert last_boxed("\\boxed{\\{x\\}}") == "\\{x\\}"


# ----------------------------------------------------------------------------------------------
# MATH: normaliser
# ----------------------------------------------------------------------------------------------
NORMALIZER_EQUAL = [
    ("\\frac12", "\\dfrac{1}{2}"), ("\\frac{1}{2}", "1/2"), ("0.5", "\\frac12"),
    ("\\tfrac{3}{4}", "0.75"), ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("90°", "90"),
    ("(1,2]", "(1, 2]"), ("\\left( 1, 2 \\right)", "(1,2)"), ("\\sqrt2", "\\sqrt{2}"),
    ("\\text{Evelyn}", "Evelyn"), ("10\\text{ cm}", "10"), ("5\\text{ units}^2", "5"),
    ("$5$", "5"), ("\\$5", "5"), ("x = 5", "5"), ("x\\in[1,2]", "[1,2]"),
    ("10{,}000", "10000"), ("1,000", "1000"), ("\\text{(C)}", "C"), ("(C)", "C"),
    ("5.0", "5"), ("-\\frac{3}{4}", "-0.75"), ("\\dfrac{-3}{4}", "-3/4"),
    ("50\\%", "50"), ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}"), ("12 degrees", "12"),
    ("\\(\\frac{2}{3}\\)", "2/3"), ("\\!12", "12"), ("\\mbox{Monday}", "Monday"),
]
NORMALIZER_DIFFERENT = [
    ("\\frac{1}{2}", "\\frac{1}{3}"), ("2", "-2"), ("(1,2)", "[1,2]"), ("x+1", "x-1"),
    ("\\sqrt{2}", "2"), ("3", "3.0001"), ("\\text{Evelyn}", "Evan"), ("", ""), ("5", "50"),
]


@pytest.mark.parametrize("a,b", NORMALIZER_EQUAL)
def test_normalizer_equivalences(a, b):
    assert normalized_equal(a, b), (normalize_math(a), normalize_math(b))


@pytest.mark.parametrize("a,b", NORMALIZER_DIFFERENT)
def test_normalizer_keeps_different_answers_apart(a, b):
    assert not normalized_equal(a, b)


# ----------------------------------------------------------------------------------------------
# MATH: math-verify through the worker
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(hard_timeout_s=8.0) as v:
        yield v


MATH_VERIFY_CASES = [
    # gold, prediction, equal
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("x^2+1", "1+x^2", True),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\pi", "3.14159", False),
    ("[1,2]", "(1,2)", False),
    ("2", "-2", False),
    ("(1,2)", "(2,1)", False),
    ("5", "\\text{5 apples}", False),
    ("3x+2", "2+3x", True),
    ("\\infty", "\\infty", True),
]


@pytest.mark.parametrize("gold,pred,equal", MATH_VERIFY_CASES)
def test_math_equivalence(verifier, gold, pred, equal):
    verdict, method = verifier.equal(gold, pred)
    assert verdict is equal, method
    assert method in ("normalizer", "math-verify")


def test_empty_or_missing_prediction_is_wrong(verifier):
    assert verifier.equal("5", None) == (False, "no answer")
    assert verifier.equal("5", "  ") == (False, "no answer")


def test_pathological_input_times_out_and_worker_recovers():
    with MathVerifier(hard_timeout_s=2.0, soft_timeout_s=30) as v:
        verdict, method = v.equal("1", "10^{10^{10^{10}}}")
        assert (verdict, method) == (False, "math-verify-timeout")
        assert v.equal("2\\sqrt{3}", "\\sqrt{12}") == (True, "math-verify")


def test_judge_math_reports_answer_and_method(verifier):
    j = judge_math("... so the area is \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", verifier)
    assert (j.answer, j.correct, j.method) == ("\\dfrac{1}{2}", True, "normalizer")
    j = judge_math("The answer is: 7", "8", verifier)
    assert (j.answer, j.correct) == ("7", False)

"""Code extraction, program building and pass@1 judging for MBPP and HumanEval."""
from __future__ import annotations

import pytest

from eval_data import MBPP
from fusionroute.eval.benchmarks import get_benchmark, load_records
from fusionroute.eval.benchmarks.humaneval import build_humaneval_program
from fusionroute.eval.benchmarks.mbpp import build_mbpp_program, mbpp_entry_point
from fusionroute.eval.code import defines, extract_code, fenced_blocks, judge_code

FULL_FN = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize("completion,entry,expected", [
    (f"```python\n{FULL_FN}```", "add", FULL_FN),
    (f"Here you go:\n```py\n{FULL_FN}```\nDone.", "add", FULL_FN),
    (f"```\n{FULL_FN}```", "add", FULL_FN),
    (f"```Python\n{FULL_FN}```", "add", FULL_FN),
    # Several blocks: the one defining the entry point wins over an earlier example block.
    ("```python\nprint(add(1, 2))\n```\nand the function:\n```python\n" + FULL_FN + "```",
     "add", FULL_FN),
    ("```python\ndef helper():\n    pass\n```\n```python\n" + FULL_FN + "```", "add", FULL_FN),
    # No entry-point match: first block that defines anything.
    ("```python\nx = 1\n```\n```python\ndef other():\n    return 2\n```", "add",
     "def other():\n    return 2\n"),
    # Unterminated fence (generation cut off).
    ("```python\n" + FULL_FN, "add", FULL_FN),
    # Non-python fences are ignored; whole completion when no python block.
    ("```bash\nls\n```", "add", "```bash\nls\n```"),
    (FULL_FN, "add", FULL_FN),
    ("    return a + b\n", "add", "    return a + b\n"),
])
def test_extract_code(completion, entry, expected):
    assert extract_code(completion, entry) == expected


def test_fenced_blocks_and_defines():
    text = "```python\na = 1\n```\ntext\n```js\nx\n```\n```py\nb = 2\n```"
    assert fenced_blocks(text) == ["a = 1\n", "b = 2\n"]
    assert defines("def f(x):\n    pass", "f") and not defines("    def f(x): pass", "f")
    assert defines("async def g():\n    pass", "g") and not defines("x = 1", None)


@pytest.mark.parametrize("record,expected", [
    (MBPP[0], "remove_Occ"), (MBPP[1], "sort_matrix"), (MBPP[2], "square_perimeter"),
    ({"test_list": ["assert math.isclose(area(2), 12.56, rel_tol=0.01)"], "code": ""}, "area"),
    ({"test_list": ["assert set(common([1,2],[2])) == set([2])"], "code": ""}, "common"),
    ({"test_list": ["assert (fn(1)) == 2"], "code": ""}, "fn"),
    ({"test_list": ["assert not is_odd(2)"], "code": ""}, "is_odd"),
    ({"test_list": [], "code": "def helper():\n  pass\ndef main_fn():\n  pass"}, "main_fn"),
])
def test_mbpp_entry_point(record, expected):
    assert mbpp_entry_point(record) == expected


def test_mbpp_program_layout():
    program = build_mbpp_program(MBPP[3], "```python\ndef add_offset(x):\n    return OFFSET + x\n```")
    assert program.index("OFFSET = 10") < program.index("def add_offset") < program.index(
        "assert add_offset(1)")


@pytest.fixture(scope="module")
def humaneval():
    return {r["id"]: r for r in load_records("humaneval")}


def test_humaneval_continuation_and_full_function_programs(humaneval):
    rec = humaneval["HumanEval/0"]
    continuation = build_humaneval_program(rec, rec["canonical_solution"])
    assert continuation.startswith(rec["prompt"] + rec["canonical_solution"])
    assert continuation.rstrip().endswith("check(has_close_elements)")
    fenced = "```python\n" + rec["prompt"] + rec["canonical_solution"] + "```"
    full = build_humaneval_program(rec, fenced)
    assert full.count("def has_close_elements") == 2   # prompt stub redefined by the answer


def test_judge_code_mbpp_styles():
    good = [f"```python\n{r['code']}\n```" for r in MBPP]
    bare = [r["code"] for r in MBPP]
    wrong = ["```python\ndef remove_Occ(s, ch):\n    return s\n```",
             "def sort_matrix(M):\n    return M",
             "```python\ndef square_perimeter(a):\n    while True:\n        pass\n```",
             "I cannot solve this."]
    records = MBPP * 3
    results = judge_code(build_mbpp_program, records, good + bare + wrong, workers=2)
    assert [r.correct for r in results] == [True] * 8 + [False] * 4
    assert results[10].result.status == "timeout"


def test_judge_code_humaneval_styles(humaneval):
    ids = ["HumanEval/0", "HumanEval/10", "HumanEval/38", "HumanEval/32"]
    recs = [humaneval[i] for i in ids]
    # HumanEval/10, /38 and /32 rely on helpers defined in the prompt; full-function answers
    # that omit them must still work, as must typing imports the answer does not repeat.
    full_fn = ["```python\ndef " + r["entry_point"]
               + r["prompt"].rsplit("def " + r["entry_point"], 1)[1]
               + r["canonical_solution"] + "```" for r in recs]
    assert all("import" not in f and "def is_palindrome" not in f for f in full_fn)
    continuation = [r["canonical_solution"] for r in recs]
    empty = ["    pass\n"] * len(recs)
    results = judge_code(build_humaneval_program, recs * 3, full_fn + continuation + empty, workers=2)
    assert [r.correct for r in results] == [True] * 8 + [False] * 4, [
        (r.result.reason, r.result.stderr[-200:]) for r in results]


def test_only_code_benchmarks_build_programs():
    assert get_benchmark("mbpp").build_program is build_mbpp_program
    assert get_benchmark("humaneval").build_program is build_humaneval_program
    assert get_benchmark("gsm8k").build_program is None

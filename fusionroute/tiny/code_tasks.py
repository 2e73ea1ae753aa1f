"""Tiny-world code generators: small Python functions in MBPP and HumanEval styles.

Each :class:`CodeTemplate` is a 1-5 line function family with a randomised name
(from a per-template word list) and randomised constants. A sampled
:class:`CodeProblem` carries the gold body, three test calls with outputs
computed by executing the gold code, and buggy variants (off-by-one constants,
wrong operators, wrong comparisons, wrong range bounds) that are guaranteed to
fail at least one test. Difficulty ``level`` in {1, 2, 3}: templates of level
<= ``level`` are used (1: scalar arithmetic/predicates; 2: lists and strings;
3: loops and multi-line bodies).
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass
from typing import Callable

NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
]
WORDS = ["hello", "apple", "banana", "tiny", "world", "python", "level", "data", "moon", "river",
         "bread", "garden", "noon", "cat", "sunny", "paper", "radar", "window", "orange", "code"]
LETTERS = "aeinorst"


def _int(lo, hi):
    return lambda rng, p: (rng.randint(lo, hi),)


def _two_ints(lo, hi):
    return lambda rng, p: (rng.randint(lo, hi), rng.randint(lo, hi))


def _int_list(lo=0, hi=20, kmin=2, kmax=5, distinct=False):
    def gen(rng, p):
        k = rng.randint(kmin, kmax)
        if distinct:
            return (rng.sample(range(lo, hi + 1), k),)
        return ([rng.randint(lo, hi) for _ in range(k)],)
    return gen


def _word(rng, p):
    return (rng.choice(WORDS),)


@dataclass
class CodeTemplate:
    tid: str
    level: int
    names: list[str]  # may use {cw} (constant as a word) / {c}
    args: str  # plain argument list, e.g. "x" or "xs"
    hints: str  # annotated signature tail, e.g. "(x: int) -> int"
    text: str  # MBPP description; {c} etc.
    doc: str  # HumanEval docstring summary
    body: str  # function body (4-space indented lines joined by \n), may use {c}
    inputs: Callable  # (rng, params) -> args tuple
    params: Callable = lambda rng: {}
    uses_list: bool = False


T = CodeTemplate
# A starred entry is a family of look-alike templates: one template per row of its `for`, in order.
TEMPLATES: list[CodeTemplate] = [
    # ---- level 1: scalars --------------------------------------------------
    T("add_const", 1, ["add_{cw}", "plus_{cw}", "increase_by_{cw}"], "x", "(x: int) -> int",
      "Write a function that adds {c} to a number.", "Return x plus {c}.",
      "    return x + {c}", _int(0, 50), lambda r: {"c": r.randint(2, 15)}),
    T("sub_const", 1, ["subtract_{cw}", "minus_{cw}", "decrease_by_{cw}"], "x", "(x: int) -> int",
      "Write a function that subtracts {c} from a number.", "Return x minus {c}.",
      "    return x - {c}", _int(20, 60), lambda r: {"c": r.randint(2, 15)}),
    T("mul_const", 1, ["times_{cw}", "multiply_by_{cw}", "scale_by_{cw}"], "x", "(x: int) -> int",
      "Write a function that multiplies a number by {c}.", "Return x multiplied by {c}.",
      "    return x * {c}", _int(0, 12), lambda r: {"c": r.randint(2, 9)}),
    T("square", 1, ["square", "square_num", "get_square"], "x", "(x: int) -> int",
      "Write a function to compute the square of a number.", "Return the square of x.",
      "    return x * x", _int(0, 12)),
    *(T(f"is_{parity}", 1, [f"is_{parity}", f"check_{parity}", f"{parity}_check"], "x", "(x: int) -> bool",
        f"Write a function to check whether a number is {parity}.", f"Return True if x is {parity}.",
        f"    return x % 2 == {remainder}", _int(0, 40))
      for parity, remainder in (("even", 0), ("odd", 1))),
    T("divisible", 1, ["divisible_by_{cw}", "is_multiple_of_{cw}"], "x", "(x: int) -> bool",
      "Write a function to check whether a number is divisible by {c}.",
      "Return True if x is divisible by {c}.",
      "    return x % {c} == 0", lambda rng, p: (rng.randint(1, 8) * p["c"] + rng.choice([0, 0, 1, 2]),),
      lambda r: {"c": r.randint(3, 9)}),
    T("abs_diff", 1, ["abs_diff", "distance", "gap"], "a, b", "(a: int, b: int) -> int",
      "Write a function to find the absolute difference of two numbers.",
      "Return the absolute difference of a and b.",
      "    return abs(a - b)", _two_ints(0, 30)),
    *(T(f"{fn}_two", 1, [f"{fn}_of_two", alias, f"{which}_num"], "a, b", "(a: int, b: int) -> int",
        f"Write a function to find the {which} of two numbers.", f"Return the {which} of a and b.",
        f"    if a {op} b:\n        return a\n    return b", _two_ints(0, 30))
      for fn, which, alias, op in (("max", "larger", "bigger", ">"), ("min", "smaller", "smaller", "<"))),
    T("sum_double", 1, ["double_sum", "sum_twice"], "a, b", "(a: int, b: int) -> int",
      "Write a function that returns twice the sum of two numbers.", "Return two times a plus b.",
      "    return (a + b) * 2", _two_ints(0, 20)),
    # ---- level 2: lists and strings ----------------------------------------
    T("clamp", 2, ["clamp", "limit", "bound_value"], "x", "(x: int) -> int",
      "Write a function that clamps a number between {lo} and {hi}.",
      "Return x limited to the range {lo} to {hi}.",
      "    return max({lo}, min(x, {hi}))",
      lambda rng, p: (rng.choice([rng.randint(0, p["lo"] - 1), rng.randint(p["hi"] + 1, 40),
                                  rng.randint(p["lo"], p["hi"])]),),
      lambda r: (lambda lo: {"lo": lo, "hi": lo + r.randint(3, 15)})(r.randint(1, 10))),
    *(T(f"list_{fn}", 2, [f"list_{fn}", f"find_{fn}", which], "xs", "(xs: List[int]) -> int",
        f"Write a function to find the {which} number in a list.", f"Return the {which} number in xs.",
        f"    return {fn}(xs)", _int_list(), uses_list=True)
      for fn, which in (("max", "largest"), ("min", "smallest"))),
    T("list_sum", 2, ["list_sum", "sum_list", "total"], "xs", "(xs: List[int]) -> int",
      "Write a function to find the sum of a list of numbers.", "Return the sum of the numbers in xs.",
      "    return sum(xs)", _int_list(), uses_list=True),
    T("list_len", 2, ["list_length", "count_items", "size_of"], "xs", "(xs: List[int]) -> int",
      "Write a function to count the items in a list.", "Return the number of items in xs.",
      "    return len(xs)", _int_list(kmin=1, kmax=7), uses_list=True),
    T("first_elem", 2, ["first_item", "head", "get_first"], "xs", "(xs: List[int]) -> int",
      "Write a function to get the first item of a list.", "Return the first item of xs.",
      "    return xs[0]", _int_list(), uses_list=True),
    T("last_elem", 2, ["last_item", "tail_item", "get_last"], "xs", "(xs: List[int]) -> int",
      "Write a function to get the last item of a list.", "Return the last item of xs.",
      "    return xs[-1]", _int_list(), uses_list=True),
    T("filter_evens", 2, ["filter_evens", "keep_evens", "even_items"], "xs",
      "(xs: List[int]) -> List[int]",
      "Write a function to keep only the even numbers of a list.", "Return the even numbers in xs.",
      "    return [x for x in xs if x % 2 == 0]", _int_list(), uses_list=True),
    T("filter_gt", 2, ["above_{cw}", "greater_than_{cw}", "keep_over_{cw}"], "xs",
      "(xs: List[int]) -> List[int]",
      "Write a function to keep the numbers of a list that are greater than {c}.",
      "Return the numbers in xs that are greater than {c}.",
      "    return [x for x in xs if x > {c}]", _int_list(), lambda r: {"c": r.randint(3, 15)},
      uses_list=True),
    T("add_each", 2, ["add_{cw}_to_all", "shift_by_{cw}", "raise_all_{cw}"], "xs",
      "(xs: List[int]) -> List[int]",
      "Write a function that adds {c} to every number in a list.", "Return xs with {c} added to each item.",
      "    return [x + {c} for x in xs]", _int_list(kmax=4), lambda r: {"c": r.randint(2, 12)},
      uses_list=True),
    T("contains", 2, ["has_{cw}", "contains_{cw}"], "xs", "(xs: List[int]) -> bool",
      "Write a function to check whether a list contains the number {c}.",
      "Return True if {c} is in xs.",
      "    return {c} in xs",
      lambda rng, p: ([rng.randint(0, 15) for _ in range(3)] + ([p["c"]] if rng.random() < 0.5 else []),),
      lambda r: {"c": r.randint(1, 15)}, uses_list=True),
    T("reverse_str", 2, ["reverse", "reverse_string", "flip_text"], "s", "(s: str) -> str",
      "Write a function to reverse a string.", "Return the string s reversed.",
      "    return s[::-1]", _word),
    T("count_char", 2, ["count_{ch}", "num_{ch}"], "s", "(s: str) -> int",
      "Write a function to count how many times the letter {ch} appears in a string.",
      "Return how many times '{ch}' appears in s.",
      "    return s.count('{ch}')", _word, lambda r: {"ch": r.choice(LETTERS)}),
    T("repeat_str", 2, ["repeat_{cw}", "copy_{cw}_times"], "s", "(s: str) -> str",
      "Write a function that repeats a string {c} times.", "Return s repeated {c} times.",
      "    return s * {c}", _word, lambda r: {"c": r.randint(2, 4)}),
    T("upper_str", 2, ["to_upper", "shout", "make_upper"], "s", "(s: str) -> str",
      "Write a function to convert a string to upper case.", "Return s in upper case.",
      "    return s.upper()", _word),
    T("first_char", 2, ["first_letter", "initial"], "s", "(s: str) -> str",
      "Write a function to get the first letter of a string.", "Return the first letter of s.",
      "    return s[0]", _word),
    # ---- level 3: loops / multi-line ----------------------------------------
    T("sum_range", 3, ["sum_to_n", "sum_up_to", "triangle"], "n", "(n: int) -> int",
      "Write a function to find the sum of the numbers from 1 to n.",
      "Return the sum 1 + 2 + ... + n.",
      "    total = 0\n    for i in range(1, n + 1):\n        total += i\n    return total", _int(1, 12)),
    T("factorial", 3, ["factorial", "fact"], "n", "(n: int) -> int",
      "Write a function to compute the factorial of n.", "Return n factorial.",
      "    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result", _int(0, 7)),
    T("count_vowels", 3, ["count_vowels", "vowel_count"], "s", "(s: str) -> int",
      "Write a function to count the vowels in a string.", "Return the number of vowels in s.",
      "    return sum(1 for ch in s if ch in 'aeiou')", _word),
    T("count_gt", 3, ["count_above_{cw}", "how_many_over_{cw}"], "xs", "(xs: List[int]) -> int",
      "Write a function to count the numbers in a list that are greater than {c}.",
      "Return how many numbers in xs are greater than {c}.",
      "    count = 0\n    for x in xs:\n        if x > {c}:\n            count += 1\n    return count",
      _int_list(), lambda r: {"c": r.randint(3, 15)}, uses_list=True),
    T("second_largest", 3, ["second_largest", "runner_up"], "xs", "(xs: List[int]) -> int",
      "Write a function to find the second largest number in a list of different numbers.",
      "Return the second largest number in xs.",
      "    return sorted(xs)[-2]", _int_list(kmin=3, distinct=True), uses_list=True),
    T("sum_squares", 3, ["sum_of_squares", "square_sum"], "xs", "(xs: List[int]) -> int",
      "Write a function to find the sum of the squares of a list of numbers.",
      "Return the sum of the squares of xs.",
      "    return sum(x * x for x in xs)", _int_list(hi=9, kmax=4), uses_list=True),
    T("product", 3, ["product", "multiply_all"], "xs", "(xs: List[int]) -> int",
      "Write a function to find the product of a list of numbers.",
      "Return the product of the numbers in xs.",
      "    result = 1\n    for x in xs:\n        result *= x\n    return result", _int_list(1, 6, kmax=4),
      uses_list=True),
    T("sum_evens", 3, ["sum_evens", "even_total"], "xs", "(xs: List[int]) -> int",
      "Write a function to find the sum of the even numbers in a list.",
      "Return the sum of the even numbers in xs.",
      "    return sum(x for x in xs if x % 2 == 0)", _int_list(), uses_list=True),
    T("spread", 3, ["spread", "value_range", "max_gap"], "xs", "(xs: List[int]) -> int",
      "Write a function to find the difference between the largest and smallest number in a list.",
      "Return the largest number in xs minus the smallest.",
      "    return max(xs) - min(xs)", _int_list(), uses_list=True),
    T("palindrome", 3, ["is_palindrome", "reads_same"], "s", "(s: str) -> bool",
      "Write a function to check whether a string reads the same backwards.",
      "Return True if s is a palindrome.",
      "    return s == s[::-1]", _word),
]
TEMPLATE_BY_ID = {t.tid: t for t in TEMPLATES}

# Mutations used for buggy (rejected) code: (pattern, replacement).
_MUTATIONS = [
    (" + ", " - "), (" - ", " + "), (" * ", " + "), (" > ", " >= "), (" < ", " <= "),
    (" > ", " < "), (" < ", " > "), (" == ", " != "), ("== 0", "== 1"), ("== 1", "== 0"), ("max(", "min("), ("min(", "max("),
    ("[0]", "[1]"), ("[-1]", "[0]"), ("[-2]", "[-1]"), ("n + 1)", "n)"), ("range(2,", "range(1,"),
    ("[::-1]", "[1:]"), (".upper()", ".lower()"), ("'aeiou'", "'aei'"), ("= 1\n", "= 0\n"),
    ("= 0\n", "= 1\n"), ("+= 1", "+= 2"), ("* 2", "* 3"), ("% 2", "% 3"),
]


@dataclass
class CodeProblem:
    key: str
    template: CodeTemplate
    name: str
    params: dict
    tests: list[tuple[tuple, object]]  # (args, expected)
    example: tuple[tuple, object]
    level: int

    renames: dict | None = None  # original argument name -> chosen argument name

    # -- rendering ------------------------------------------------------------
    def _rn(self, text: str) -> str:
        for old, new in (self.renames or {}).items():
            text = re.sub(rf"\b{old}\b", new, text)
        return text

    @property
    def args(self) -> str:
        return self._rn(self.template.args)

    @property
    def hints(self) -> str:
        return self._rn(self.template.hints)

    @property
    def body(self) -> str:
        return self._rn(self.template.body.format(**self.params))

    def _call(self, fn: str, args: tuple) -> str:
        return f"{fn}({', '.join(repr(a) for a in args)})"

    def test_asserts(self) -> list[str]:
        return [f"assert {self._call(self.name, a)} == {out!r}" for a, out in self.tests]

    def mbpp_text(self) -> str:
        return self.template.text.format(**self.params)

    def mbpp_code(self, body: str | None = None) -> str:
        return f"def {self.name}({self.args}):\n{body or self.body}"

    @property
    def imports(self) -> str:
        return "from typing import List\n\n\n" if self.template.uses_list else ""

    def he_prompt(self) -> str:
        ex_args, ex_out = self.example
        doc = self._rn(self.template.doc.format(**self.params))
        return (f"{self.imports}def {self.name}{self.hints}:\n"
                f'    """ {doc}\n    >>> {self._call(self.name, ex_args)}\n    {ex_out!r}\n    """\n')

    def he_full(self, body: str | None = None) -> str:
        return f"{self.imports}def {self.name}{self.hints}:\n{body or self.body}"

    def he_test(self) -> str:
        lines = [f"    assert {self._call('candidate', a)} == {out!r}" for a, out in self.tests]
        return "def check(candidate):\n" + "\n".join(lines) + "\n"

    def buggy_bodies(self, generic: bool = True) -> list[str]:
        """Mutated bodies that compile and fail at least one test.

        Targeted mutations (operators, comparisons, bounds, constants +-1) come first;
        ``generic`` adds a last-resort change of the returned value (+1 / not / [1:]).
        """
        out = []
        body = self.body
        cands: list[str] = []
        for pat, rep in _MUTATIONS:
            if pat in body:
                cands.append(body.replace(pat, rep, 1))
        for m in re.finditer(r"(?<![\w\[-])(\d+)(?![\w\]])", body):
            v = int(m.group(1))
            for nv in (v + 1, v - 1):
                if nv >= 0:
                    cands.append(body[:m.start()] + str(nv) + body[m.end():])
        # generic off-by-one / negation of the returned value as a last resort
        last = body.rstrip().split("\n")[-1]
        expr = last.strip()[len("return "):]
        if generic and last.strip().startswith("return "):
            outs = [o for _, o in self.tests]
            if all(isinstance(o, bool) for o in outs):
                cands.append(body.replace(last, last.replace(expr, f"not ({expr})")))
            elif all(isinstance(o, int) for o in outs):
                cands.append(body.replace(last, last.replace(expr, f"({expr}) + 1")))
            elif all(isinstance(o, (str, list)) for o in outs):
                cands.append(body.replace(last, last.replace(expr, f"({expr})[1:]")))
        seen = set()
        for b in cands:
            if b == body or b in seen:
                continue
            seen.add(b)
            if not _passes(self.mbpp_code(b), self.name, self.tests):
                out.append(b)
        return out


def _exec_fn(code: str, name: str):
    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "<tiny>", "exec"), ns)  # our own generated code only
    return ns[name]


def _passes(code: str, name: str, tests) -> bool:
    try:
        fn = _exec_fn(code, name)
        return all(fn(*[list(a) if isinstance(a, list) else a for a in args]) == exp for args, exp in tests)
    except Exception:
        return False


ARG_NAMES = {
    "x": [["x"], ["n"], ["num"], ["value"]],
    "n": [["n"], ["k"], ["num"], ["limit"]],
    "xs": [["xs"], ["nums"], ["values"], ["items"], ["arr"]],
    "s": [["s"], ["text"], ["word"], ["string"]],
    "a, b": [["a", "b"], ["x", "y"], ["m", "n"], ["p", "q"]],
}


def _name(t: CodeTemplate, rng: random.Random, params: dict) -> str:
    pat = rng.choice(t.names)
    c = params.get("c")
    return pat.format(cw=NUMBER_WORDS[c] if isinstance(c, int) and c <= 20 else str(c), c=c,
                      ch=params.get("ch", ""))


def sample_code(rng: random.Random, level: int) -> CodeProblem:
    pool = [t for t in TEMPLATES if t.level <= level]
    # weight the newest level up so harder templates are well represented
    weights = [2.0 if t.level == level else 1.0 for t in pool]
    t = rng.choices(pool, weights=weights, k=1)[0]
    params = t.params(rng)
    name = _name(t, rng, params)
    old = [a.strip() for a in t.args.split(",")]
    new = rng.choice(ARG_NAMES[t.args])
    renames = {o: n for o, n in zip(old, new) if o != n}
    prob = CodeProblem(key="", template=t, name=name, params=params, tests=[], example=((), None),
                       level=t.level, renames=renames)
    fn = _exec_fn(prob.mbpp_code(), name)
    seen: list[tuple] = []
    for _ in range(60):
        args = t.inputs(rng, params)
        if args not in seen:
            seen.append(args)
        if len(seen) == 4:
            break
    while len(seen) < 4:  # tiny input spaces: allow repeats
        seen.append(t.inputs(rng, params))
    cases = [(a, fn(*[list(x) if isinstance(x, list) else x for x in a])) for a in seen]
    prob.key = (f"code|{t.tid}|{name}|{','.join(new)}|"
                + "|".join(f"{k}={params[k]}" for k in sorted(params)))
    prob.tests, prob.example = cases[:3], cases[3]
    return prob

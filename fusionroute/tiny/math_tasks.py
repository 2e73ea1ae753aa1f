"""Tiny-world math generators: GSM8K-like word problems and MATH-like exact problems.

Every sampler takes ``(rng, level)`` and returns a :class:`MathProblem`. A problem
knows its canonical split key, its text, and how to render its step-by-step
solution either correctly or with one corrupted arithmetic step (for preference
"rejected" responses). Difficulty ``level`` in {1, 2, 3}:

* GSM-like: level 1 -> 1-2 operations, values <= 50; level 2 -> 2-3 operations,
  values <= 99; level 3 -> 3-4 operations, values <= 99.
* MATH-like: the level picks the template family and the size of the numbers
  (longer expressions, unlike denominators, negative solutions at level 3).

Numbers stay small (results 0-99 for GSM-like) so a ~2M-parameter model with a
digit-split tokenizer can learn the arithmetic in a few hundred steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

NAMES = [
    ("Tom", "he", "his"), ("Ann", "she", "her"), ("Sam", "he", "his"), ("Mia", "she", "her"),
    ("Ben", "he", "his"), ("Lily", "she", "her"), ("Max", "he", "his"), ("Emma", "she", "her"),
    ("Leo", "he", "his"), ("Zoe", "she", "her"), ("Jack", "he", "his"), ("Ruth", "she", "her"),
    ("Paul", "he", "his"), ("Nina", "she", "her"), ("Omar", "he", "his"), ("Sara", "she", "her"),
]
OBJECTS = [
    "apples", "pens", "books", "marbles", "stickers", "cookies", "cards", "shells",
    "coins", "stamps", "eggs", "toys", "balls", "flowers", "candies", "pencils",
]
NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
]

# ---------------------------------------------------------------------------
# Step machinery (integer arithmetic, used by the GSM-like problems)
# ---------------------------------------------------------------------------
_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b,
    "**": lambda a, b: a ** b,
}


@dataclass
class Step:
    """One computation ``a op b = r``; ``a``/``b`` are ints or ("r", i) references."""

    a: object
    op: str
    b: object
    fmt: str  # reasoning sentence with {a} {b} {r} placeholders


def _run_steps(steps: list[Step], corrupt: tuple[int, int] | None = None) -> tuple[list[str], int]:
    """Evaluate steps; ``corrupt=(i, delta)`` adds delta to step i's result (errors propagate)."""
    results: list[int] = []
    lines: list[str] = []

    def val(x):
        return results[x[1]] if isinstance(x, tuple) else x

    for i, st in enumerate(steps):
        a, b = val(st.a), val(st.b)
        r = _OPS[st.op](a, b)
        if corrupt is not None and corrupt[0] == i:
            r += corrupt[1]
        results.append(r)
        lines.append(st.fmt.format(a=a, b=b, r=r))
    return lines, results[-1]


@dataclass
class MathProblem:
    key: str
    text: str
    style: str  # "gsm8k" or "math500"
    answer: str  # exact answer string (int for gsm8k)
    lines: list[str]  # correct reasoning lines
    subject: str = ""
    mlevel: int = 1  # MATH level 1-5
    corruptions: list[Callable[[random.Random], tuple[list[str], str] | None]] = field(default_factory=list)

    # -- responses --------------------------------------------------------
    def response(self) -> str:
        return "\n".join(self.lines) + f"\nThe answer is: {self.answer}"

    def rejected(self, rng: random.Random) -> str:
        """A realistic wrong solution: one wrong step (propagated) or a wrong final answer."""
        if self.corruptions and rng.random() < 0.6:
            for _ in range(6):
                out = rng.choice(self.corruptions)(rng)
                if out is not None and out[1] != self.answer:
                    lines, ans = out
                    return "\n".join(lines) + f"\nThe answer is: {ans}"
        return "\n".join(self.lines) + f"\nThe answer is: {_perturb_answer(self.answer, rng)}"


def _perturb_answer(ans: str, rng: random.Random) -> str:
    try:
        v = int(ans)
    except ValueError:
        fr = _parse_frac(ans)
        if fr is None:
            return ans + "1"
        num, den = fr.numerator + rng.choice([-1, 1]), fr.denominator
        if num == 0:
            num = fr.numerator + 1
        return _latex_frac(Fraction(num, den)) if Fraction(num, den) != fr else _latex_frac(fr + 1)
    d = rng.choice([-3, -2, -1, 1, 2, 3, 10])
    if v + d < 0 and v >= 0:
        d = -d
    return str(v + d)


def _parse_frac(s: str) -> Fraction | None:
    s = s.strip()
    neg = s.startswith("-")
    if neg:
        s = s[1:]
    if s.startswith("\\frac{"):
        try:
            n, d = s[len("\\frac{"):-1].split("}{")
            f = Fraction(int(n), int(d))
            return -f if neg else f
        except ValueError:
            return None
    return None


def _latex_frac(f: Fraction) -> str:
    if f.denominator == 1:
        return str(f.numerator)
    sign = "-" if f < 0 else ""
    return f"{sign}\\frac{{{abs(f.numerator)}}}{{{f.denominator}}}"


# ---------------------------------------------------------------------------
# GSM8K-like
# ---------------------------------------------------------------------------
# Chain operations: (question sentence, reasoning sentence); {P} subject pronoun.
_ADD = [
    ("{P} buys {k} more.", "{P} buys {k} more, so {a} + {b} = {r}."),
    ("{P} finds {k} more.", "{P} finds {k} more, so {a} + {b} = {r}."),
    ("A friend gives {o} {k} more.", "A friend gives {o} {k} more, so {a} + {b} = {r}."),
    ("{P} wins {k} more at a game.", "{P} wins {k} more, so {a} + {b} = {r}."),
    ("{P} gets {k} more as a gift.", "{P} gets {k} more, so {a} + {b} = {r}."),
]
_SUB = [
    ("{P} gives {k} to a friend.", "{P} gives away {k}, so {a} - {b} = {r}."),
    ("{P} loses {k} of them.", "{P} loses {k}, so {a} - {b} = {r}."),
    ("{P} sells {k} of them.", "{P} sells {k}, so {a} - {b} = {r}."),
    ("{P} uses {k} of them.", "{P} uses {k}, so {a} - {b} = {r}."),
    ("{P} puts {k} of them in a box for {pos} sister.", "{P} puts away {k}, so {a} - {b} = {r}."),
]
_MUL = [
    ("Then the number of {obj} doubles.", "The number doubles, so {a} * {b} = {r}.", 2),
    ("Then {p} triples the number of {obj}.", "The number triples, so {a} * {b} = {r}.", 3),
    ("Then {p} gets twice as many {obj} as {p} has.", "{P} gets twice as many, so {a} * {b} = {r}.", 2),
]
_HALF = [
    ("{P} gives half of them to {name2}.", "{P} gives away half, so {a} / {b} = {r}."),
    ("{P} loses half of them.", "{P} loses half, so {a} / {b} = {r}."),
]
_QUESTION = [
    "How many {obj} does {name} have now?",
    "How many {obj} does {p} have at the end?",
    "How many {obj} does {name} have left?",
]


def _fmt(s: str, **kw) -> str:
    """Fill context placeholders, keeping the step placeholders {a} {b} {r}."""
    out = s.format(**{"a": "{a}", "b": "{b}", "r": "{r}", **kw})
    return out[0].upper() + out[1:]


def _gsm_chain(rng: random.Random, level: int) -> MathProblem:
    name, p, pos = rng.choice(NAMES)
    name2 = rng.choice([n for n in NAMES if n[0] != name])[0]
    obj = rng.choice(OBJECTS)
    o = "him" if p == "he" else "her"
    vmax = 50 if level == 1 else 99
    n_ops = {1: rng.randint(1, 2), 2: rng.randint(2, 3), 3: rng.randint(3, 4)}[level]
    v = rng.randint(2, 20 if level == 1 else 30)
    ctx = dict(P=p.capitalize(), p=p, o=o, pos=pos, obj=obj, name=name, name2=name2)
    q_parts = [f"{name} has {v} {obj}."]
    r_parts_steps: list[Step] = []
    key_parts = [f"{name}|{obj}|{v}"]
    cur: object = v
    cur_val = v
    final_split = None
    for i in range(n_ops):
        last = i == n_ops - 1
        kinds = ["add", "sub", "add", "sub", "mul", "half", "group"]
        if last and level >= 2:
            kinds.append("split")
        for _ in range(20):
            kind = rng.choice(kinds)
            if kind == "add" and cur_val < vmax - 1:
                k = rng.randint(1, min(30, vmax - cur_val))
                q, r = rng.choice(_ADD)
                nv = cur_val + k
                st = Step(cur, "+", k, _fmt(r, k=k, **ctx))
                break
            if kind == "sub" and cur_val >= 2:
                k = rng.randint(1, cur_val - 1)
                q, r = rng.choice(_SUB)
                nv = cur_val - k
                st = Step(cur, "-", k, _fmt(r, k=k, **ctx))
                break
            if kind == "mul":
                q, r, m = rng.choice(_MUL)
                if cur_val * m <= vmax:
                    nv = cur_val * m
                    k = m
                    st = Step(cur, "*", m, _fmt(r, **ctx))
                    break
            if kind == "half" and cur_val % 2 == 0 and cur_val >= 2:
                q, r = rng.choice(_HALF)
                nv, k = cur_val // 2, 2
                st = Step(cur, "/", 2, _fmt(r, **ctx))
                break
            if kind == "group":
                m, per = rng.randint(2, 5), rng.randint(2, 9)
                if cur_val + m * per <= vmax:
                    q = "{P} buys {m} bags with {per} {obj} in each bag."
                    q = q.replace("{m}", str(m)).replace("{per}", str(per))
                    idx = len(r_parts_steps)
                    r_parts_steps.append(Step(m, "*", per, _fmt("{P} buys {a} * {b} = {r} more {obj}.", **ctx)))
                    nv = cur_val + m * per
                    k = m * per
                    st = Step(cur, "+", ("r", idx), f"Now {p} has {{a}} + {{b}} = {{r}} {obj}.")
                    break
            if kind == "split":
                divs = [d for d in range(2, 7) if cur_val % d == 0 and cur_val // d >= 1]
                if divs:
                    m = rng.choice(divs)
                    q = "{P} shares them equally among {m} friends.".replace("{m}", str(m))
                    nv, k = cur_val // m, m
                    st = Step(cur, "/", m, "Each friend gets {a} / {b} = {r}.")
                    final_split = m
                    break
        else:  # fallback: always-possible add of 1
            k, q, r = 1, _ADD[0][0], _ADD[0][1]
            nv = cur_val + 1
            st = Step(cur, "+", 1, _fmt(r, k=1, **ctx))
        q_parts.append(_fmt(q, k=k, **ctx))
        key_parts.append(q_parts[-1])
        r_parts_steps.append(st)
        cur = ("r", len(r_parts_steps) - 1)
        cur_val = nv
    if final_split:
        q_parts.append(f"How many {obj} does each friend get?")
    else:
        removed = any(st.op in "-/" for st in r_parts_steps)
        q_parts.append(_fmt(rng.choice(_QUESTION if removed else _QUESTION[:2]), **ctx))
    lines0 = [f"{name} starts with {v} {obj}."]
    lines, ans = _run_steps(r_parts_steps)
    assert ans == cur_val, (ans, cur_val)
    text = " ".join(q_parts)
    return _gsm_problem("chain|" + "|".join(key_parts), text, r_parts_steps, lines0, level)


def _gsm_problem(key: str, text: str, steps: list[Step], prefix: list[str], level: int) -> MathProblem:
    lines, ans = _run_steps(steps)

    def corrupt(rng: random.Random):
        i = rng.randrange(len(steps))
        d = rng.choice([-2, -1, 1, 2, 10, -10])
        try:
            bad_lines, bad = _run_steps(steps, (i, d))
        except ZeroDivisionError:
            return None
        if bad < 0:
            return None
        return prefix + bad_lines, str(bad)

    return MathProblem(key=key, text=text, style="gsm8k", answer=str(ans), lines=prefix + lines,
                       subject="arithmetic", mlevel=level, corruptions=[corrupt])


def _gsm_change(rng, level):
    name, p, _ = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    m, price = rng.randint(2, 6), rng.randint(2, 9)
    cost = m * price
    bill = min(b for b in (10, 20, 50, 100) if b >= cost)
    text = (f"{name} buys {m} {obj} for {price} dollars each. {p.capitalize()} pays with a "
            f"{bill} dollar bill. How much change does {p} get?")
    steps = [Step(m, "*", price, f"The {obj} cost {{a}} * {{b}} = {{r}} dollars."),
             Step(bill, "-", ("r", 0), "The change is {a} - {b} = {r} dollars.")]
    return _gsm_problem(f"change|{name}|{obj}|{m}|{price}|{bill}", text, steps, [], level)


def _gsm_together(rng, level):
    (name, p, _), (name2, _, _) = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    a = rng.randint(3, 40)
    more = rng.random() < 0.5
    k = rng.randint(1, 20) if more else rng.randint(1, a - 1)
    b = a + k if more else a - k
    word = "more" if more else "fewer"
    text = (f"{name} has {a} {obj}. {name2} has {k} {word} {obj} than {name}. "
            f"How many {obj} do they have together?")
    steps = [Step(a, "+" if more else "-", k, f"{name2} has {{a}} {'+' if more else '-'} {{b}} = {{r}} {obj}."),
             Step(a, "+", ("r", 0), "Together they have {a} + {b} = {r} " + obj + ".")]
    return _gsm_problem(f"together|{name}|{name2}|{obj}|{a}|{k}|{word}", text, steps, [], level)


def _gsm_boxes(rng, level):
    name, p, _ = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    m, per = rng.randint(2, 9), rng.randint(2, 11)
    tot = m * per
    t = rng.randint(1, tot - 1) if tot > 1 else 0
    text = (f"There are {m} boxes with {per} {obj} in each box. {name} takes {t} {obj} out. "
            f"How many {obj} are left in the boxes?")
    steps = [Step(m, "*", per, "There are {a} * {b} = {r} " + obj + " in all."),
             Step(("r", 0), "-", t, "After " + name + " takes some out, {a} - {b} = {r} are left.")]
    return _gsm_problem(f"boxes|{name}|{obj}|{m}|{per}|{t}", text, steps, [], level)


def _gsm_rate(rng, level):
    name, p, _ = rng.choice(NAMES)
    per, days = rng.randint(2, 12), rng.randint(2, 8)
    extra = rng.randint(1, 15)
    text = (f"{name} reads {per} pages every day for {days} days. Then {p} reads {extra} more pages. "
            f"How many pages does {name} read in total?")
    steps = [Step(per, "*", days, "In " + str(days) + " days " + p + " reads {a} * {b} = {r} pages."),
             Step(("r", 0), "+", extra, "In total {a} + {b} = {r} pages.")]
    return _gsm_problem(f"rate|{name}|{per}|{days}|{extra}", text, steps, [], level)


def _gsm_spend(rng, level):
    name, p, _ = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    m, price, bag = rng.randint(2, 7), rng.randint(2, 9), rng.randint(3, 20)
    text = (f"{name} buys {m} {obj} at {price} dollars each and a bag for {bag} dollars. "
            f"How many dollars does {p} spend?")
    steps = [Step(m, "*", price, "The " + obj + " cost {a} * {b} = {r} dollars."),
             Step(("r", 0), "+", bag, "With the bag " + p + " spends {a} + {b} = {r} dollars.")]
    return _gsm_problem(f"spend|{name}|{obj}|{m}|{price}|{bag}", text, steps, [], level)


_GSM_FRAMES = [_gsm_change, _gsm_together, _gsm_boxes, _gsm_rate, _gsm_spend]


def sample_gsm(rng: random.Random, level: int) -> MathProblem:
    if level >= 3 or rng.random() < 0.55:
        return _gsm_chain(rng, level)
    return rng.choice(_GSM_FRAMES)(rng, level)


# ---------------------------------------------------------------------------
# MATH-like (exact answers, LaTeX-flavoured text)
# ---------------------------------------------------------------------------
def _math_problem(key, text, lines, answer, subject, mlevel, corrupt=None) -> MathProblem:
    return MathProblem(key=key, text=text, style="math500", answer=answer, lines=lines,
                       subject=subject, mlevel=mlevel, corruptions=[corrupt] if corrupt else [])


def _m_expression(rng, level):
    """Nested integer expression, parenthesised so it is evaluated inside out."""
    n_ops = {1: 2, 2: 3, 3: 4}[level]
    while True:
        steps = [Step(rng.randint(1, 12), rng.choice("+-*"), rng.randint(1, 12), "")]
        for i in range(1, n_ops):
            op = rng.choice("+-*")
            steps.append(Step(("r", i - 1), op, rng.randint(1, 9 if op == "*" else 20), ""))
        vals: list[int] = []
        for st in steps:
            x = vals[st.a[1]] if isinstance(st.a, tuple) else st.a
            vals.append(_OPS[st.op](x, st.b))
        if all(-50 <= v <= 150 for v in vals):
            break
    for st in steps:
        sym = "\\times" if st.op == "*" else st.op
        st.fmt = "{a} " + sym + " {b} = {r}."
    expr = _paren_expr(steps)
    lines, ans = _run_steps(steps)
    assert eval(expr.replace("\\times", "*")) == ans
    head = ["Work from the inside out."]

    def corrupt(r):
        bl, bad = _run_steps(steps, (r.randrange(len(steps)), r.choice([-2, -1, 1, 2])))
        return head + bl, str(bad)

    return _math_problem("expr|" + expr, f"Compute ${expr}$.", head + lines, str(ans), "Prealgebra",
                         level, corrupt)


def _paren_expr(steps: list[Step]) -> str:
    expr = ""
    for i, st in enumerate(steps):
        sym = "\\times" if st.op == "*" else st.op
        left = str(st.a) if i == 0 else expr
        expr = f"{left} {sym} {st.b}"
        if i < len(steps) - 1:
            expr = f"({expr})"
    return expr


def _m_linear(rng, level):
    a = rng.randint(2, 9)
    x = rng.randint(-9, 12) if level >= 3 else rng.randint(1, 12)
    b = rng.randint(1, 30)
    if level >= 2 and rng.random() < 0.5:
        b = -b
    c = a * x + b
    bs = f"+ {b}" if b >= 0 else f"- {-b}"
    text = f"Solve for $x$: ${a}x {bs} = {c}$."
    mv = "Subtract" if b >= 0 else "Add"
    amt = abs(b)

    def build(err=0):
        ax = c - b + err
        if b >= 0:
            lines = [f"Subtract {amt} from both sides: {a}x = {c} - {amt} = {ax}."]
        else:
            lines = [f"Add {amt} to both sides: {a}x = {c} + {amt} = {ax}."]
        if ax % a:
            fr = Fraction(ax, a)
            lines.append(f"Divide both sides by {a}: x = {_latex_frac(fr)}.")
            return lines, _latex_frac(fr)
        lines.append(f"Divide both sides by {a}: x = {ax} / {a} = {ax // a}.")
        return lines, str(ax // a)

    lines, ans = build()
    return _math_problem(f"linear|{a}|{b}|{c}", text, lines, ans, "Algebra", 1 + level,
                         lambda r: build(r.choice([-a, a, -1, 1])))


def _m_simplify(rng, level):
    hi = 12 if level == 1 else 20
    while True:
        p, q = rng.randint(1, hi), rng.randint(2, hi)
        g = rng.randint(2, 6 if level == 1 else 9)
        if math.gcd(p, q) == 1 and p != q:
            break
    n, d = p * g, q * g
    text = f"Simplify $\\frac{{{n}}}{{{d}}}$."
    ans = _latex_frac(Fraction(n, d))

    def build(gg):
        res = f"\\frac{{{n // gg}}}{{{d // gg}}}" if gg != g else ans
        return [f"The greatest common divisor of {n} and {d} is {gg}.",
                f"Divide the top and the bottom by {gg}: {n} / {gg} = {n // gg} and {d} / {gg} = {d // gg}.",
                f"So the fraction is {res}."], res

    lines, _ = build(g)
    divs = [x for x in range(2, g) if g % x == 0]

    def corrupt(r):
        return build(r.choice(divs)) if divs else None

    return _math_problem(f"simplify|{n}|{d}", text, lines, ans, "Number Theory", level, corrupt)


def _m_frac_add(rng, level):
    dens = [2, 3, 4, 5, 6, 8, 10, 12] if level >= 2 else [2, 3, 4, 6]
    while True:
        b, d = rng.choice(dens), rng.choice(dens)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        if math.gcd(a, b) != 1 or math.gcd(c, d) != 1:
            continue
        if level == 1 and b != d and b % d and d % b:
            continue
        break
    op = "+" if level < 3 or rng.random() < 0.5 else "-"
    l = b * d // math.gcd(b, d)
    a2, c2 = a * (l // b), c * (l // d)
    res = Fraction(a, b) + Fraction(c, d) if op == "+" else Fraction(a, b) - Fraction(c, d)
    text = f"Compute $\\frac{{{a}}}{{{b}}} {op} \\frac{{{c}}}{{{d}}}$."
    ans = _latex_frac(res)

    def build(err=0):
        top = (a2 + c2 if op == "+" else a2 - c2) + err
        r = Fraction(top, l)
        conv = [f"\\frac{{{x}}}{{{y}}} = \\frac{{{x2}}}{{{l}}}" for x, y, x2 in ((a, b, a2), (c, d, c2)) if y != l]
        lines = [f"The common denominator is {l}."]
        if conv:
            lines.append(" and ".join(conv) + ".")
        word = "Add" if op == "+" else "Subtract"
        lines.append(f"{word} the numerators: {a2} {op} {c2} = {top}.")
        res = f"\\frac{{{top}}}{{{l}}}"
        lines.append(f"So the result is {res}." if res == _latex_frac(r) else f"So the result is {res} = {_latex_frac(r)}.")
        return lines, _latex_frac(r)

    lines, _ = build()
    return _math_problem(f"fracadd|{a}|{b}|{op}|{c}|{d}", text, lines, ans, "Prealgebra", 1 + level,
                         lambda r: build(r.choice([-1, 1, 2])))


def _m_powers(rng, level):
    b1, e1 = rng.randint(2, 5), rng.randint(2, 3 if level == 1 else 4)
    b2, e2 = rng.randint(2, 6), 2
    while b1 ** e1 > 256:
        e1 -= 1
    op = rng.choice("+-")
    v1, v2 = b1 ** e1, b2 ** e2
    steps = [Step(b1, "**", e1, "{a}^{b} = {r}."), Step(b2, "**", e2, "{a}^{b} = {r}."),
             Step(("r", 0), op, ("r", 1), "So {a} " + op + " {b} = {r}.")]
    text = f"What is ${b1}^{e1} {op} {b2}^{e2}$?"
    lines, ans = _run_steps(steps)

    def corrupt(r):
        bl, bad = _run_steps(steps, (r.randrange(3), r.choice([-1, 1, 2])))
        return bl, str(bad)

    return _math_problem(f"powers|{b1}|{e1}|{op}|{b2}|{e2}", text, lines, str(ans), "Algebra", level, corrupt)


def _m_remainder(rng, level):
    d = rng.randint(3, 9 if level < 3 else 13)
    n = rng.randint(d + 1, 99 if level < 3 else 199)
    q, rem = divmod(n, d)
    text = f"What is the remainder when {n} is divided by {d}?"

    def build(qq):
        rr = n - d * qq
        return [f"{n} = {d} \\times {qq} + {rr}.", f"So the remainder is {rr}."], str(rr)

    lines, ans = build(q)
    return _math_problem(f"rem|{n}|{d}", text, lines, ans, "Number Theory", level,
                         lambda r: build(q - 1))


def _m_gcd(rng, level):
    g = rng.randint(2, 12)
    while True:
        x, y = rng.randint(2, 9), rng.randint(2, 9)
        if x != y and math.gcd(x, y) == 1:
            break
    a, b = max(x, y) * g, min(x, y) * g
    text = f"Find the greatest common divisor of {b} and {a}."
    lines = []
    p, q = a, b
    while q:
        lines.append(f"{p} = {p // q} \\times {q} + {p % q}.")
        p, q = q, p % q
    lines.append(f"The last nonzero remainder is {p}.")
    return _math_problem(f"gcd|{a}|{b}", text, lines, str(p), "Number Theory", 1 + level)


def _m_function(rng, level):
    m, c = rng.randint(2, 9), rng.randint(1, 15)
    x = rng.randint(1, 9) if level < 3 else rng.randint(-6, 9)
    sgn = rng.choice("+-")
    xs = f"({x})" if x < 0 else "{b}"
    steps = [Step(m, "*", x, "{a} \\times " + xs + " = {r}."),
             Step(("r", 0), sgn, c, "{a} " + sgn + " {b} = {r}.")]
    text = f"If $f(x) = {m}x {sgn} {c}$, what is $f({x})$?"
    lines, ans = _run_steps(steps)
    lines = [f"Substitute x = {x}."] + lines
    return _math_problem(f"func|{m}|{sgn}|{c}|{x}", text, lines, str(ans), "Algebra", level,
                         lambda r: (lambda t: ([f"Substitute x = {x}."] + t[0], str(t[1])))(
                             _run_steps(steps, (r.randrange(2), r.choice([-1, 1, 2])))))


def _m_mean(rng, level):
    k = 3 if level == 1 else rng.randint(3, 5)
    while True:
        xs = [rng.randint(1, 20) for _ in range(k)]
        if sum(xs) % k == 0:
            break
    text = f"What is the mean of {', '.join(map(str, xs))}?"

    def build(err=0):
        s = sum(xs) + err
        return [f"The sum is {' + '.join(map(str, xs))} = {s}.",
                f"There are {k} numbers, so the mean is {s} / {k} = {_latex_frac(Fraction(s, k))}."], _latex_frac(Fraction(s, k))

    lines, ans = build()
    return _math_problem("mean|" + ",".join(map(str, xs)), text, lines, ans, "Prealgebra", level,
                         lambda r: build(r.choice([-k, k])))


def _m_percent(rng, level):
    p = rng.choice([10, 20, 25, 50, 75] if level < 3 else [5, 10, 15, 20, 25, 30, 40, 60, 75])
    base = rng.randint(1, 20) * 20
    text = f"What is ${p}\\%$ of ${base}$?"

    def build(err=0):
        lines = [f"{p}\\% of {base} is {p} \\times {base} / 100.",
                 f"{p} \\times {base} = {p * base + err}, and {p * base + err} / 100 = {_latex_frac(Fraction(p * base + err, 100))}."]
        return lines, _latex_frac(Fraction(p * base + err, 100))

    lines, ans = build()
    return _math_problem(f"percent|{p}|{base}", text, lines, ans, "Prealgebra", level,
                         lambda r: build(r.choice([-100, 100])))


_MATH_BY_LEVEL = {
    # level 1 keeps the families a ~1M-parameter model can learn in minutes (no percent/mean/fraction sums)
    1: [_m_expression, _m_simplify, _m_powers, _m_remainder, _m_function],
    2: [_m_expression, _m_linear, _m_simplify, _m_frac_add, _m_powers, _m_remainder, _m_gcd, _m_function, _m_mean],
    3: [_m_expression, _m_linear, _m_frac_add, _m_gcd, _m_function, _m_remainder, _m_percent],
}


def sample_math(rng: random.Random, level: int) -> MathProblem:
    gen = rng.choice(_MATH_BY_LEVEL[level])
    prob = gen(rng, level)
    prob.mlevel = max(1, min(5, prob.mlevel))
    return prob


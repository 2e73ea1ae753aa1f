"""Tiny-world data generators: determinism, schemas, train/test separation, gold correctness.

Gold answers are checked independently of the generators: arithmetic is recomputed from the
problem text, code runs in a real subprocess against its asserts / check(), and IFEval-style
responses go through the real IFEval checkers (if_verifiable) with real Punkt data.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from fractions import Fraction

import pytest

from fusionroute.eval.benchmarks import humaneval, mbpp
from fusionroute.tiny import instruct_tasks, tasks

N = 120  # items per benchmark / domain in the heavier checks


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
_RUNNER = r"""
import json, sys
progs = json.load(sys.stdin)
bad = []
for i, src in enumerate(progs):
    try:
        exec(compile(src, f"<prog{i}>", "exec"), {"__name__": "__tiny__"})
    except BaseException as e:  # noqa: BLE001
        bad.append([i, type(e).__name__ + ": " + str(e)[:200]])
print(json.dumps(bad))
"""


def run_programs(progs: list[str]) -> list[tuple[int, str]]:
    """Execute each program in a fresh namespace inside ONE subprocess; return failures."""
    out = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(progs), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [tuple(x) for x in json.loads(out.stdout)]


def fenced_code(response: str) -> str:
    m = re.fullmatch(r"```python\n(.*)\n```", response, flags=re.DOTALL)
    assert m, response
    return m.group(1)


def answer_of(response: str) -> str:
    m = re.search(r"The answer is: (.+)\s*$", response)
    assert m, response
    return m.group(1).strip()


def parse_exact(ans: str) -> Fraction:
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", ans)
    if m:
        f = Fraction(int(m.group(2)), int(m.group(3)))
        return -f if m.group(1) else f
    return Fraction(int(ans))


def solve_math500(problem: str) -> Fraction:
    """Independent solver for the MATH-like problem families."""
    def latex_eval(expr: str) -> Fraction:
        expr = re.sub(r"\\frac\{(\d+)\}\{(\d+)\}", r"Fraction(\1, \2)", expr)
        expr = expr.replace("\\times", "*").replace("^", "**")
        expr = re.sub(r"(?<![\w.])(\d+)(?![\w(])", r"Fraction(\1)", expr)
        return Fraction(eval(expr, {"Fraction": Fraction}))

    if m := re.fullmatch(r"Compute \$(.+)\$\.", problem):
        return latex_eval(m.group(1))
    if m := re.fullmatch(r"Solve for \$x\$: \$(\d+)x ([+-]) (\d+) = (-?\d+)\$\.", problem):
        a, sgn, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        return Fraction(c - (b if sgn == "+" else -b), a)
    if m := re.fullmatch(r"Simplify \$\\frac\{(\d+)\}\{(\d+)\}\$\.", problem):
        return Fraction(int(m.group(1)), int(m.group(2)))
    if m := re.fullmatch(r"What is \$(\d+\^\d+ [+-] \d+\^\d+)\$\?", problem):
        return latex_eval(m.group(1))
    if m := re.fullmatch(r"What is the remainder when (\d+) is divided by (\d+)\?", problem):
        return Fraction(int(m.group(1)) % int(m.group(2)))
    if m := re.fullmatch(r"Find the greatest common divisor of (\d+) and (\d+)\.", problem):
        return Fraction(math.gcd(int(m.group(1)), int(m.group(2))))
    if m := re.fullmatch(r"If \$f\(x\) = (\d+)x ([+-]) (\d+)\$, what is \$f\((-?\d+)\)\$\?", problem):
        mm, sgn, c, x = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        return Fraction(mm * x + (c if sgn == "+" else -c))
    if m := re.fullmatch(r"What is the mean of ([\d, ]+)\?", problem):
        xs = [int(v) for v in m.group(1).split(", ")]
        return Fraction(sum(xs), len(xs))
    if m := re.fullmatch(r"What is \$(\d+)\\%\$ of \$(\d+)\$\?", problem):
        return Fraction(int(m.group(1)) * int(m.group(2)), 100)
    raise AssertionError(f"unrecognised problem: {problem}")


def solve_gsm(q: str) -> int:
    """Independent solver for the GSM-like question phrasings."""
    if m := re.fullmatch(r"\w+ buys (\d+) \w+ for (\d+) dollars each\. \w+ pays with a (\d+) dollar bill\..*", q):
        return int(m.group(3)) - int(m.group(1)) * int(m.group(2))
    if m := re.fullmatch(r"\w+ has (\d+) \w+\. \w+ has (\d+) (more|fewer) \w+ than \w+\..*", q):
        a, k = int(m.group(1)), int(m.group(2))
        return a + (a + k if m.group(3) == "more" else a - k)
    if m := re.fullmatch(r"There are (\d+) boxes with (\d+) \w+ in each box\. \w+ takes (\d+) \w+ out\..*", q):
        return int(m.group(1)) * int(m.group(2)) - int(m.group(3))
    if m := re.fullmatch(r"\w+ reads (\d+) pages every day for (\d+) days\. Then \w+ reads (\d+) more pages\..*", q):
        return int(m.group(1)) * int(m.group(2)) + int(m.group(3))
    if m := re.fullmatch(r"\w+ buys (\d+) \w+ at (\d+) dollars each and a bag for (\d+) dollars\..*", q):
        return int(m.group(1)) * int(m.group(2)) + int(m.group(3))
    sents = re.findall(r"[^.?]+[.?]", q)
    m = re.fullmatch(r"\w+ has (\d+) \w+\.", sents[0].strip())
    assert m, q
    v = int(m.group(1))
    for s in sents[1:]:
        s = s.strip()
        if s.endswith("?"):
            break
        if m := re.search(r"buys (\d+) bags with (\d+)", s):
            v += int(m.group(1)) * int(m.group(2))
        elif m := re.search(r"(?:buys|finds|wins|gets|gives \w+) (\d+) more", s):
            v += int(m.group(1))
        elif m := re.search(r"(?:gives|loses|sells|uses|puts) (\d+)", s):
            v -= int(m.group(1))
        elif "half" in s:
            assert v % 2 == 0
            v //= 2
        elif "doubles" in s or "twice" in s:
            v *= 2
        elif "triples" in s:
            v *= 3
        elif m := re.search(r"equally among (\d+)", s):
            assert v % int(m.group(1)) == 0
            v //= int(m.group(1))
        else:
            raise AssertionError(f"unrecognised sentence {s!r} in {q!r}")
    return v


def check_arith_lines(text: str) -> None:
    """Every 'a op b [op c ...] = r' in a reasoning text must be correct."""
    found = re.findall(r"((?:-?\d+ (?:\+|-|\*|/|\\times) )+\(?-?\d+\)?) = (-?\d+)", text)
    # "84 = 3 \times 24 + 12" (division with remainder) and "4^3 = 64"
    found += [(rhs, lhs) for lhs, rhs in re.findall(
        r"(?:^|\n)(-?\d+) = ((?:-?\d+ (?:\+|-|\\times) )+-?\d+)\.", text)]
    found += [(f"{b} ** {e}", r) for b, e, r in re.findall(r"(\d+)\^(\d+) = (\d+)", text)]
    assert found, text
    for lhs, r in found:
        expr = re.sub(r"(-?\d+)", r"Fraction(\1)", lhs.replace("\\times", "*"))
        expr = expr.replace("Fraction(**)", "**")
        assert eval(expr, {"Fraction": Fraction}) == int(r), (lhs, r, text)


@pytest.fixture(scope="module")
def ifeval_check(tmp_path_factory):
    """The real IFEval checkers (if_verifiable), Punkt data installed offline, langdetect seeded."""
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    try:
        from fusionroute.eval.nltk_data import ensure_punkt_data
        ensure_punkt_data(tmp_path_factory.mktemp("nltk"))
    except ImportError:  # pragma: no cover - eval module not there yet
        pytest.skip("fusionroute.eval.nltk_data missing")
    import langdetect
    langdetect.DetectorFactory.seed = 0

    def check(prompt: str, ids: list[str], kwargs: list[dict], response: str) -> list[bool]:
        results, _ = evaluate_instructions(response, ids, kwargs, prompt, INSTRUCTION_DICT)
        assert len(results) == len(ids)
        return [r.strict_pass for r in results]
    return check


# ---------------------------------------------------------------------------
# determinism and schemas
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", tasks.BENCHMARKS)
def test_benchmark_deterministic_and_seed_dependent(name):
    a = tasks.make_benchmark(name, 25, seed=3)
    assert a == tasks.make_benchmark(name, 25, seed=3)
    assert a != tasks.make_benchmark(name, 25, seed=4)
    assert len(a) == 25


def test_training_sets_deterministic():
    for dom in tasks.DOMAINS:
        assert tasks.make_sft(dom, 20, 1) == tasks.make_sft(dom, 20, 1)
        assert tasks.make_sft(dom, 20, 1) != tasks.make_sft(dom, 20, 2)
    assert tasks.make_sft_mix(30, 1) == tasks.make_sft_mix(30, 1)
    assert tasks.make_preferences(15, 1) == tasks.make_preferences(15, 1)
    assert tasks.make_preferences(15, 1) != tasks.make_preferences(15, 2)
    assert tasks.make_pretraining_corpus(40, 1) == tasks.make_pretraining_corpus(40, 1)
    assert tasks.make_pretraining_corpus(40, 1) != tasks.make_pretraining_corpus(40, 2)


def test_benchmark_schemas():
    g = tasks.make_benchmark("gsm8k", 30, 0)
    for r in g:
        assert set(r) == {"question", "answer"}
        assert re.search(r"\n#### \d+$", r["answer"])
    m = tasks.make_benchmark("math500", 30, 0)
    for r in m:
        assert set(r) == {"problem", "solution", "answer", "subject", "level", "unique_id"}
        assert isinstance(r["level"], int) and 1 <= r["level"] <= 5
        assert r["subject"] in {"Prealgebra", "Algebra", "Number Theory"}
        assert re.fullmatch(r"tiny/[a-z_]+/\d+\.json", r["unique_id"])
        assert "\\boxed{" + r["answer"] + "}" in r["solution"]
    assert len({r["unique_id"] for r in m}) == len(m)
    mb = tasks.make_benchmark("mbpp", 30, 0)
    for r in mb:
        assert set(r) == {"task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list"}
        assert isinstance(r["task_id"], int) and len(r["test_list"]) == 3
        assert r["test_setup_code"] == "" and r["challenge_test_list"] == []
        assert all(t.startswith("assert ") for t in r["test_list"])
    assert len({r["task_id"] for r in mb}) == 30
    he = tasks.make_benchmark("humaneval", 30, 0)
    for r in he:
        assert set(r) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
        assert r["task_id"].startswith("TinyEval/")
        assert f"def {r['entry_point']}(" in r["prompt"] and '"""' in r["prompt"] and ">>> " in r["prompt"]
        assert r["test"].startswith("def check(candidate):\n    assert candidate(")
        assert r["canonical_solution"].startswith("    ") and r["canonical_solution"].endswith("\n")
    ie = tasks.make_benchmark("ifeval", 40, 0)
    for r in ie:
        assert set(r) == {"key", "prompt", "instruction_id_list", "kwargs"}
        assert isinstance(r["key"], int) and 1 <= len(r["instruction_id_list"]) <= 3
        assert len(r["kwargs"]) == len(r["instruction_id_list"])


def test_ifeval_ids_and_kwargs_are_the_real_ones():
    """Every id exists in the real registry and kwargs are exactly its build_description args."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    seen = set()
    for r in tasks.make_benchmark("ifeval", 200, 1):
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            seen.add(iid)
            checker = INSTRUCTION_DICT[iid](iid)
            checker.build_description(**kw)
            assert sorted(kw) == sorted(checker.get_instruction_args_keys()), (iid, kw)
            if "relation" in kw:
                assert kw["relation"] in ("less than", "at least")
    assert seen == set(instruct_tasks.INSTRUCTION_IDS)


def test_instruction_format_matches_contract():
    """SFT instructions are formatted exactly like benchmark instructions: the SFT code styles are
    the registry's benchmark objects, so their instruction is the one evaluation uses."""
    from fusionroute.eval.benchmarks import get_benchmark

    assert (tasks._MBPP, tasks._HUMANEVAL) == (get_benchmark("mbpp"), get_benchmark("humaneval"))
    code = tasks.make_sft("code", 60, 0)
    styles = {it["style"] for it in code}
    assert styles == {"mbpp", "humaneval"}
    for it in code:
        if it["style"] == "mbpp":
            text, tests = it["instruction"].split(mbpp.TESTS_HEADER)
            assert len(tests.split("\n")) == 3 and all(t.startswith("assert ") for t in tests.split("\n"))
        else:
            assert it["instruction"].startswith(humaneval.HEADER) and it["instruction"].endswith('"""\n```')
    assert {it["style"] for it in tasks.make_sft("math", 60, 0)} == {"gsm8k", "math500"}
    for it in tasks.make_sft_mix(30, 0) + code:
        assert set(it) == {"domain", "style", "instruction", "response"}


# ---------------------------------------------------------------------------
# train / test separation
# ---------------------------------------------------------------------------
def test_split_by_key_is_disjoint():
    assert 0.12 < sum(tasks.is_test_key(f"k{i}") for i in range(5000)) / 5000 < 0.28
    for name in tasks.BENCHMARKS:
        items = tasks.benchmark_items(name, 60, 0)
        assert all(tasks.is_test_key(k) for k, _ in items)
        assert len({k for k, _ in items}) == 60  # unique within a benchmark
    for dom in tasks.DOMAINS:
        assert not any(tasks.is_test_key(k) for k, _ in tasks.sft_items(dom, 150, 0))
    assert not any(tasks.is_test_key(p.key) for p, _ in tasks.preference_items(60, 0))


def test_no_text_overlap_between_benchmarks_and_training():
    """End to end, on the texts: no benchmark problem / function / prompt setting appears in training."""
    train = tasks.make_sft("math", 1500, 0) + tasks.make_sft_mix(600, 0)
    train_text = {it["instruction"] for it in train}
    for rec in tasks.make_benchmark("gsm8k", 100, 0):
        assert rec["question"] not in train_text
    for rec in tasks.make_benchmark("math500", 100, 0):
        assert rec["problem"] not in train_text

    def fn_id(code):  # function name + argument names + body identify a code problem
        m = re.search(r"def (\w+)\((.*?)\)(?: -> [^:]+)?:\n(.*)", code, flags=re.DOTALL)
        args = tuple(a.split(":")[0].strip() for a in m.group(2).split(","))
        return m.group(1), args, m.group(3).strip()
    train_fns = {fn_id(fenced_code(it["response"])) for it in tasks.make_sft("code", 1500, 0)}
    assert len(train_fns) > 300
    for rec in tasks.make_benchmark("mbpp", 100, 0) + tasks.make_benchmark("humaneval", 100, 0):
        code = rec["code"] if "code" in rec else rec["prompt"].split('    """')[0] + rec["canonical_solution"]
        assert fn_id(code) not in train_fns, code

    def setting(prompt, ids, kwargs):
        topic = next(t for t in sorted(instruct_tasks.TOPICS, key=len, reverse=True) if f" {t}" in prompt.split(".")[0])
        return topic, json.dumps([ids, kwargs], sort_keys=True)
    train_settings = set()
    for key, _ in tasks.sft_items("instruct", 1000, 0):
        train_settings.add(key)
    for key, rec in tasks.benchmark_items("ifeval", 100, 0):
        assert key not in train_settings
        assert setting(rec["prompt"], rec["instruction_id_list"], rec["kwargs"])[0] in instruct_tasks.TOPICS


# ---------------------------------------------------------------------------
# gold correctness
# ---------------------------------------------------------------------------
def test_gsm8k_gold_answers_are_correct():
    for rec in tasks.make_benchmark("gsm8k", N, 5):
        gold = int(rec["answer"].rsplit("#### ", 1)[1])
        assert gold == solve_gsm(rec["question"]), rec
        assert 0 <= gold <= 99
        check_arith_lines(rec["answer"])
    for it in tasks.make_sft("math", N, 5):
        if it["style"] == "gsm8k":
            assert int(answer_of(it["response"])) == solve_gsm(it["instruction"])
            check_arith_lines(it["response"])


def test_math500_gold_answers_are_correct():
    for rec in tasks.make_benchmark("math500", N, 5):
        assert parse_exact(rec["answer"]) == solve_math500(rec["problem"]), rec
        check_arith_lines(rec["solution"])
    for it in tasks.make_sft("math", N, 6):
        if it["style"] == "math500":
            assert parse_exact(answer_of(it["response"])) == solve_math500(it["instruction"]), it


def test_math_answers_accepted_by_math_verify():
    from math_verify import parse, verify

    for rec in tasks.make_benchmark("math500", 40, 2):
        gold = parse("$" + rec["answer"] + "$")
        pred = parse(f"The answer is: ${rec['answer']}$")
        assert verify(gold, pred), rec


def test_code_gold_passes_tests_in_subprocess():
    progs = []
    for rec in tasks.make_benchmark("mbpp", N, 7):
        progs.append(rec["code"] + "\n" + "\n".join(rec["test_list"]))
    for rec in tasks.make_benchmark("humaneval", N, 7):
        progs.append(rec["prompt"] + rec["canonical_solution"] + "\n" + rec["test"]
                     + f"\ncheck({rec['entry_point']})\n")
    for it in tasks.make_sft("code", N, 7):
        code = fenced_code(it["response"])
        if it["style"] == "mbpp":
            progs.append(code + "\n" + it["instruction"].split(mbpp.TESTS_HEADER)[1])
        else:  # run the docstring example
            call, out = re.search(r">>> (.+)\n\s+(.+)\n", it["instruction"]).groups()
            progs.append(code + f"\nassert {call} == {out}\n")
    assert run_programs(progs) == []
    # and the tests are not vacuous: a wrong body fails
    rec = tasks.make_benchmark("mbpp", 1, 7)[0]
    assert run_programs([rec["code"].rsplit("\n", 1)[0] + "\n    return None\n" + "\n".join(rec["test_list"])])


def test_instruct_gold_responses_pass_real_ifeval_checkers(ifeval_check):
    for key, it in tasks.sft_items("instruct", N, 8):
        prob = _problem_for(key)
        assert all(ifeval_check(it["instruction"], prob.instruction_id_list, prob.kwargs, it["response"])), it


def _problem_for(key: str):
    """Rebuild the instruction ids/kwargs from a key (the key encodes them)."""
    _, topic, *parts = key.split("|")
    ids, kwargs = [], []
    for part in parts:
        iid, kw = part.split(":", 2)[0] + ":" + part.split(":", 2)[1], part.split(":", 2)[2]
        ids.append(iid)
        kwargs.append(json.loads(kw))
    return instruct_tasks.InstructProblem(key=key, topic=topic, prompt="", instruction_id_list=ids,
                                          kwargs=kwargs, level=2, plan={})


def test_ifeval_benchmark_prompts_are_satisfiable(ifeval_check):
    for key, rec in tasks.benchmark_items("ifeval", 60, 9):
        prob = _problem_for(key)
        assert prob.instruction_id_list == rec["instruction_id_list"] and prob.kwargs == rec["kwargs"]
        prob.prompt = rec["prompt"]
        import random
        resp = instruct_tasks.build_response(prob, random.Random(0))
        assert resp is not None
        assert all(ifeval_check(rec["prompt"], rec["instruction_id_list"], rec["kwargs"], resp))


def test_lengths_fit_context():
    for dom in tasks.DOMAINS:
        items = tasks.make_sft(dom, 300, 11, level=3)
        lens = [len(it["instruction"]) + len(it["response"]) for it in items]
        assert max(lens) < 700, max(lens)
        assert sorted(lens)[len(lens) // 2] < 400


# ---------------------------------------------------------------------------
# preferences
# ---------------------------------------------------------------------------
def test_preferences_chosen_good_rejected_flawed(ifeval_check):
    pairs = tasks.preference_items(90, 12)
    assert [it["domain"] for _, it in pairs[:3]] == ["math", "code", "instruct"]
    progs_ok, progs_bad = [], []
    for prob, it in pairs:
        assert it["chosen"] != it["rejected"]
        if it["domain"] == "math":
            good, bad = answer_of(it["chosen"]), answer_of(it["rejected"])
            assert good != bad
            assert good == prob.answer
        elif it["domain"] == "code":
            tests = "\n".join(f"assert {prob._call(prob.name, a)} == {o!r}" for a, o in prob.tests)
            progs_ok.append(fenced_code(it["chosen"]) + "\n" + tests)
            progs_bad.append(fenced_code(it["rejected"]) + "\n" + tests)
        else:
            ok = ifeval_check(it["instruction"], prob.instruction_id_list, prob.kwargs, it["chosen"])
            bad = ifeval_check(it["instruction"], prob.instruction_id_list, prob.kwargs, it["rejected"])
            assert all(ok), it
            assert sum(not b for b in bad) == 1, (it, bad)
    assert run_programs(progs_ok) == []
    assert len(run_programs(progs_bad)) == len(progs_bad)


# ---------------------------------------------------------------------------
# difficulty knob, mix, pretraining corpus
# ---------------------------------------------------------------------------
def test_level_knob_changes_difficulty():
    def steps(level):
        items = tasks.make_benchmark("gsm8k", 80, 0, level=level)
        return sum(r["answer"].count("\n") for r in items) / len(items)
    assert steps(1) < steps(3)
    n1 = [len(r["instruction_id_list"]) for r in tasks.make_benchmark("ifeval", 60, 0, level=1)]
    n3 = [len(r["instruction_id_list"]) for r in tasks.make_benchmark("ifeval", 60, 0, level=3)]
    assert set(n1) == {1} and min(n3) >= 2
    body1 = [r["canonical_solution"].count("\n") for r in tasks.make_benchmark("humaneval", 60, 0, level=1)]
    body3 = [r["canonical_solution"].count("\n") for r in tasks.make_benchmark("humaneval", 60, 0, level=3)]
    assert sum(body1) < sum(body3)
    with pytest.raises(ValueError):
        tasks.make_sft("math", 1, 0, level=4)


def test_sft_mix_is_balanced():
    mix = tasks.make_sft_mix(90, 0)
    assert {d: sum(it["domain"] == d for it in mix) for d in tasks.DOMAINS} == {"math": 30, "code": 30, "instruct": 30}


def test_pretraining_corpus_covers_all_domains():
    docs = tasks.make_pretraining_corpus(300, 0)
    assert len(docs) == 300 and all(isinstance(d, str) and d for d in docs)
    joined = "\n".join(docs)
    for marker in ("The answer is:", "```python", "def ", "assert ", "<<", "\\frac{", " = "):
        assert marker in joined, marker
    assert tasks.describe()["code"]["templates"] >= 30


def test_unknown_names_rejected():
    with pytest.raises(ValueError):
        tasks.make_benchmark("nope", 1, 0)
    with pytest.raises(ValueError):
        tasks.make_sft("poetry", 1, 0)


# ---------------------------------------------------------------------------
# the project's real scorers (fusionroute/eval/scoring.py)
# ---------------------------------------------------------------------------
def _gold_completion(name: str, key: str, rec: dict) -> str:
    """A response in the trained style (docs/CONTRACTS.md) carrying the gold answer."""
    import random
    if name == "gsm8k":
        reasoning, ans = rec["answer"].rsplit("\n#### ", 1)
        return f"{reasoning}\nThe answer is: {ans}"
    if name == "math500":
        return rec["solution"].rsplit("\n", 1)[0] + f"\nThe answer is: {rec['answer']}"
    if name == "mbpp":
        return "```python\n" + rec["code"] + "\n```"
    if name == "humaneval":  # full function without the docstring, as the SFT data has it
        return "```python\n" + rec["prompt"].split('    """')[0] + rec["canonical_solution"] + "```"
    prob = _problem_for(key)
    prob.prompt = rec["prompt"]
    return instruct_tasks.build_response(prob, random.Random(1))


def _violating(key: str, rec: dict) -> str:
    import random
    prob = _problem_for(key)
    prob.prompt = rec["prompt"]
    rng = random.Random(2)
    for j in range(len(prob.instruction_id_list)):
        resp = instruct_tasks.build_response(prob, rng, violate=j)
        if resp is not None:
            return resp
    raise AssertionError(key)


@pytest.mark.parametrize("name", tasks.BENCHMARKS)
def test_gold_style_completions_score_perfectly_with_real_scorer(name, tmp_path, ifeval_check):
    scoring = pytest.importorskip("fusionroute.eval.scoring")
    from fusionroute.eval.benchmarks import instruction_for, load_records

    items = tasks.benchmark_items(name, 30, 13)
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(rec) + "\n" for _, rec in items))
    records = load_records(name, data_path=str(path), hub_id=None, n=None, seed=0)
    assert len(records) == 30
    gens = [{"id": r["id"], "prompt": instruction_for(name, r),
             "completion": _gold_completion(name, key, rec)} for (key, rec), r in zip(items, records)]
    result = scoring.score_benchmark(name, gens, records)
    assert result["n"] == 30
    assert result["score"] == 1.0, [s for s in result["samples"] if not s["correct"]][:3]
    # not vacuous: a wrong completion for every record scores 0 (ifeval: one constraint violated)
    junk = "The answer is: 1234567\n```python\ndef f():\n    return 0\n```\nI"
    bad = [{**g, "completion": junk if name != "ifeval" else _violating(key, rec)}
           for g, (key, rec) in zip(gens, items)]
    assert scoring.score_benchmark(name, bad, records)["score"] == 0.0

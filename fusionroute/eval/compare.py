"""Paired comparison of two methods on the same benchmark items.

Two methods scored on the same items differ on a table cell by a few points; whether that is more
than sampling noise is a paired question (the items are shared), answered here with the exact
McNemar test on the items where exactly one of the two is correct. Used for the README's
FusionRoute-vs-ablation statements and for comparing a new method against stored baselines:

    python -m fusionroute.eval.compare results/tiny/tiny/fusionroute results/tiny/tiny/fusionroute_routing_only

Each argument is a method's results folder (holding <benchmark>/scores.json, as the workflow
writes them). Prints, per benchmark shared by both and pooled over them: n, both scores, the items
only A / only B gets right, and the two-sided exact p-value.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

BENCHMARK_ORDER = ("gsm8k", "math500", "mbpp", "humaneval", "ifeval")


@dataclass
class Paired:
    benchmark: str
    n: int
    score_a: float
    score_b: float
    only_a: int  # items A gets right and B wrong
    only_b: int

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the discordant items are Binomial(only_a + only_b, 1/2) under H0."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _correct_by_id(scores_file: Path) -> dict[str, bool]:
    scores = json.loads(scores_file.read_text())
    return {str(s["id"]): bool(s["correct"]) for s in scores["samples"]}


def compare(dir_a: str | Path, dir_b: str | Path) -> list[Paired]:
    """Per shared benchmark (and "pooled" last), the paired counts on the items both were scored on."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    for d in (dir_a, dir_b):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} is not a method results folder (expected <benchmark>/scores.json inside)")
    found = {p.parent.name for p in dir_a.glob("*/scores.json")} & {p.parent.name for p in dir_b.glob("*/scores.json")}
    names = [b for b in BENCHMARK_ORDER if b in found] + sorted(found - set(BENCHMARK_ORDER))
    if not names:
        raise ValueError(f"{dir_a} and {dir_b} share no scored benchmark")
    rows = []
    for name in names:
        a, b = _correct_by_id(dir_a / name / "scores.json"), _correct_by_id(dir_b / name / "scores.json")
        ids = sorted(a.keys() & b.keys())
        if not ids:
            raise ValueError(f"{name}: the two methods were scored on disjoint items")
        rows.append(Paired(name, len(ids), sum(a[i] for i in ids) / len(ids), sum(b[i] for i in ids) / len(ids),
                           sum(a[i] and not b[i] for i in ids), sum(b[i] and not a[i] for i in ids)))
    n = sum(r.n for r in rows)
    rows.append(Paired("pooled", n, sum(r.score_a * r.n for r in rows) / n, sum(r.score_b * r.n for r in rows) / n,
                       sum(r.only_a for r in rows), sum(r.only_b for r in rows)))
    return rows


def format_table(rows: list[Paired], label_a: str, label_b: str) -> str:
    lines = [f"| Benchmark | n | {label_a} | {label_b} | only {label_a} right | only {label_b} right | McNemar p |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.benchmark} | {r.n} | {r.score_a:.3f} | {r.score_b:.3f} | {r.only_a} | {r.only_b} | {r.p_value:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method_a", help="results folder of method A, e.g. results/tiny/tiny/fusionroute")
    parser.add_argument("method_b", help="results folder of method B")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.method_a, args.method_b)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows, Path(args.method_a).name, Path(args.method_b).name))
    return 0


if __name__ == "__main__":
    sys.exit(main())

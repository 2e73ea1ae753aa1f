"""Paired comparison of two methods on the same benchmark items.

Two methods scored on the same items differ on a table cell by a few points; whether that is more
than sampling noise is a paired question (the items are shared), answered here with the exact
McNemar test on the items where exactly one of the two is correct. Used for the README's
FusionRoute-vs-ablation statements and for comparing a new method against stored baselines:

    python -m fusionroute.eval.compare results/tiny/tiny/fusionroute results/tiny/tiny/fusionroute_routing_only

Each argument is a method's results folder (holding <benchmark>/scores.json, as the workflow
writes them). Prints, per benchmark and pooled: n of each side, n compared, both scores, the
difference A - B with a 95% confidence interval (paired Wald: the discordant items carry all the
information), the items only A / only B gets right, and the two-sided exact McNemar p-value.

The two sides must have been scored on the same items (the same benchmarks, the same ids):
otherwise it refuses and says what differs (a Collab cell decoded on a subset, a cell scored with
another n), because an intersection silently compares something else than the tables. With
`--shared-only` it compares on the shared items and benchmarks and labels the output so.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from fusionroute.eval.benchmarks import benchmark_names


@dataclass
class Paired:
    benchmark: str
    n: int  # items compared (scored on both sides)
    score_a: float
    score_b: float
    only_a: int  # items A gets right and B wrong
    only_b: int
    n_a: int = 0  # items A was scored on (0: as n)
    n_b: int = 0

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)

    @property
    def difference(self) -> float:
        return (self.only_a - self.only_b) / self.n

    @property
    def interval(self) -> tuple[float, float]:
        """95% CI of the paired difference of accuracies (Wald on the discordant counts)."""
        d, n = self.difference, self.n
        var = ((self.only_a + self.only_b) / n - d * d) / n
        half = 1.959964 * math.sqrt(max(var, 0.0))
        return d - half, d + half


class MismatchError(ValueError):
    """The two sides were not scored on the same items."""


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


def compare(dir_a: str | Path, dir_b: str | Path, shared_only: bool = False) -> list[Paired]:
    """Per benchmark (and "pooled" last), the paired counts. Both sides must hold the same
    benchmarks and ids unless `shared_only`, which compares on what they share."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    for d in (dir_a, dir_b):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} is not a method results folder (expected <benchmark>/scores.json inside)")
    have_a = {p.parent.name for p in dir_a.glob("*/scores.json")}
    have_b = {p.parent.name for p in dir_b.glob("*/scores.json")}
    found = have_a & have_b
    if not found:
        raise ValueError(f"{dir_a} and {dir_b} share no scored benchmark")
    if have_a != have_b and not shared_only:
        raise MismatchError(f"benchmarks differ: only {dir_a} has {sorted(have_a - have_b)}, only {dir_b} has "
                            f"{sorted(have_b - have_a)}; pass --shared-only to compare on {sorted(found)}")
    # registered benchmarks in table order, then any other folder (a benchmark since removed) by name
    order = benchmark_names()
    names = [b for b in order if b in found] + sorted(found - set(order))
    rows = []
    for name in names:
        a, b = _correct_by_id(dir_a / name / "scores.json"), _correct_by_id(dir_b / name / "scores.json")
        ids = sorted(a.keys() & b.keys())
        if not ids:
            raise ValueError(f"{name}: the two methods were scored on disjoint items")
        if (len(ids) != len(a) or len(ids) != len(b)) and not shared_only:
            raise MismatchError(f"{name}: {dir_a} was scored on {len(a)} items, {dir_b} on {len(b)}, {len(ids)} "
                                f"shared; pass --shared-only to compare on the {len(ids)} shared items")
        rows.append(Paired(name, len(ids), sum(a[i] for i in ids) / len(ids), sum(b[i] for i in ids) / len(ids),
                           sum(a[i] and not b[i] for i in ids), sum(b[i] and not a[i] for i in ids), len(a), len(b)))
    n = sum(r.n for r in rows)
    rows.append(Paired("pooled", n, sum(r.score_a * r.n for r in rows) / n, sum(r.score_b * r.n for r in rows) / n,
                       sum(r.only_a for r in rows), sum(r.only_b for r in rows),
                       sum(r.n_a for r in rows), sum(r.n_b for r in rows)))
    return rows


def format_table(rows: list[Paired], label_a: str, label_b: str, shared_only: bool = False) -> str:
    lines = [f"| Benchmark | n {label_a} | n {label_b} | n compared | {label_a} | {label_b} | {label_a} - {label_b} "
             f"[95% CI] | only {label_a} right | only {label_b} right | McNemar p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r.interval
        lines.append(f"| {r.benchmark} | {r.n_a or r.n} | {r.n_b or r.n} | {r.n} | {r.score_a:.3f} | {r.score_b:.3f} | "
                     f"{r.difference:+.3f} [{low:+.3f}, {high:+.3f}] | {r.only_a} | {r.only_b} | {r.p_value:.3g} |")
    if shared_only and any(r.n != (r.n_a or r.n) or r.n != (r.n_b or r.n) for r in rows):
        lines.append("\nShared items only (--shared-only): the scores above are not the tables' cells.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method_a", help="results folder of method A, e.g. results/tiny/tiny/fusionroute")
    parser.add_argument("method_b", help="results folder of method B")
    parser.add_argument("--shared-only", action="store_true",
                        help="compare on the items and benchmarks both were scored on (labelled so)")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.method_a, args.method_b, shared_only=args.shared_only)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows, Path(args.method_a).name, Path(args.method_b).name, args.shared_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Sandbox throughput: score N MBPP-sized programs (a small function + 3 asserts; every 5th has
a wrong assert) through fusionroute.eval.sandbox and print programs/s and total seconds.

    python scripts/bench_sandbox.py [--n 500] [--workers K] [--minimal]
"""
from __future__ import annotations

import argparse
import json
import os
import time

from fusionroute.eval.sandbox import (
    SandboxLimits, default_workers, detect_isolation, minimal_isolation, run_programs)

_TEMPLATES = [
    ("def f_{i}(xs):\n    return sorted(set(xs))[:{k}]\n",
     "f_{i}([3, 1, 2, 3, {i}])", "sorted(set([3, 1, 2, 3, {i}]))[:{k}]"),
    ("def f_{i}(s):\n    return ''.join(reversed(s)).upper() * {k}\n",
     "f_{i}('ab{i}')", "('ab{i}'[::-1]).upper() * {k}"),
    ("def f_{i}(n):\n    total = 0\n    for j in range(n):\n        total += j * {k}\n"
     "    return total\n", "f_{i}({i} % 50)", "sum(j * {k} for j in range({i} % 50))"),
    ("import math\n\ndef f_{i}(a, b):\n    return math.gcd(a, b) + {k}\n",
     "f_{i}({i} + 12, 18)", "math.gcd({i} + 12, 18) + {k}"),
]


def make_program(i: int) -> tuple[str, bool]:
    """Program i and whether it should pass (every 5th negates its last assert)."""
    body, call, expected = _TEMPLATES[i % len(_TEMPLATES)]
    k = i % 7 + 1
    fmt = {"i": i, "k": k}
    should_pass = i % 5 != 0
    check = f"{call.format(**fmt)} == {expected.format(**fmt)}"
    asserts = [f"assert {check}"] * 2 + [f"assert {'' if should_pass else 'not '}({check})"]
    return body.format(**fmt) + "\n" + "\n".join(asserts) + "\n", should_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--minimal", action="store_true",
                        help="no namespaces/cgroups (the weakest fallback), for comparison")
    args = parser.parse_args()
    isolation = minimal_isolation() if args.minimal else detect_isolation()
    programs, expected = zip(*(make_program(i) for i in range(args.n)))
    workers = args.workers or default_workers()
    start = time.monotonic()
    results = run_programs(list(programs), SandboxLimits(timeout_s=10), workers=workers,
                           isolation=isolation)
    total = time.monotonic() - start
    mismatches = [i for i, (r, e) in enumerate(zip(results, expected)) if r.passed != e]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    print(json.dumps({"programs": args.n, "workers": workers, "cpus": os.cpu_count(),
                      "total_s": round(total, 2), "programs_per_s": round(args.n / total, 1),
                      "statuses": statuses, "unexpected_outcomes": len(mismatches),
                      "isolation": isolation.describe()}, indent=2))
    if mismatches:
        raise SystemExit(f"unexpected outcomes for programs {mismatches[:10]}")


if __name__ == "__main__":
    main()

"""The tiny world's "general" prompt set for the pairwise judge (Figures 3 and 4).

The paper judges open-ended answers to held-out general prompts with GPT-4o. The tiny world has
no open-ended data and no LLM judge, so its general set is a mix of held-out items of the five
synthetic benchmarks, each carrying its ground truth so that `VerifierJudge` can score answers
with the real benchmark scorers.

Held out: for benchmark b evaluated on n_b items, `make_benchmark(b, n_b + k, seed)` draws the
same first n_b items as the benchmark's evaluation set (the draw is sequential and seeded per
benchmark), so items n_b .. n_b + k - 1 are test-pool items that no table is scored on and no
training set contains (training data draws train-pool keys only).

Records: {"id": "<benchmark>/<record id>", "instruction": instruction_for(benchmark, record),
          "reference": {"benchmark": benchmark, "record": record (with its "id")}}.
"""
from __future__ import annotations

from fusionroute.eval.benchmarks import get_spec, instruction_for
from fusionroute.tiny.tasks import BENCHMARKS, make_benchmark


def _record_id(name: str, record: dict, index: int) -> str:
    field = get_spec(name).id_field
    return str(index) if field is None else str(record[field])


def make_general(n: int, seed: int, evaluated: dict[str, int], level: int | None = None) -> list[dict]:
    """`n` held-out items spread round-robin over the five benchmarks (order: gsm8k, math500,
    mbpp, humaneval, ifeval). `evaluated[b]` = the number of items benchmark b is scored on."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    counts = {b: n // len(BENCHMARKS) + (1 if i < n % len(BENCHMARKS) else 0) for i, b in enumerate(BENCHMARKS)}
    per_benchmark: dict[str, list[dict]] = {}
    for name in BENCHMARKS:
        skip = int(evaluated.get(name, 0))
        records = make_benchmark(name, skip + counts[name], seed, level=level)
        rows = []
        for index in range(skip, skip + counts[name]):
            record = {**records[index]}
            record["id"] = _record_id(name, record, index)
            rows.append({"id": f"{name}/{record['id']}", "instruction": instruction_for(name, record),
                         "reference": {"benchmark": name, "record": record}})
        per_benchmark[name] = rows
    out = []
    for i in range(max(counts.values())):  # interleave, so any prefix mixes the benchmarks
        out += [per_benchmark[b][i] for b in BENCHMARKS if i < len(per_benchmark[b])]
    return out

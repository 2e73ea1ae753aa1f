"""Workflow steps of workflow/rules/report.smk: Tables 1 and 2, the routing summary."""
from __future__ import annotations

from pathlib import Path

from fusionroute.io import read_jsonl, write_json
from fusionroute.steps import step


@step
def table(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Table 1 / Table 2 from scores.json files; rows list their score files by benchmark."""
    from fusionroute.eval.tables import Row, load_row, write_table

    rows: list[Row] = []
    for spec in params["rows"]:
        row = load_row(spec["family"], spec["group"], spec["method"], spec["scores"])
        row.stale = frozenset(b for b, path in spec["scores"].items() if _cell_is_stale(Path(path).with_name("settings.json")))
        cost = spec.get("forwards")
        if cost:
            row.note = _forwards_note([read_jsonl(p) for p in cost])
        rows.append(row)
    write_table(rows, outputs["tex"], params["caption"], params["label"])


def _cell_is_stale(settings: Path) -> bool:
    """Whether a cell's generate step ran code that has changed since (fusionroute.provenance)."""
    from fusionroute.io import read_json
    from fusionroute.provenance import is_stale

    return settings.is_file() and is_stale(read_json(settings).get("code"))


def _forwards_note(generation_files: list[list[dict]]) -> str:
    """Model forwards per emitted token over all benchmarks of a method (where recorded)."""
    forwards = sum(r.get("forwards", 0) for rows in generation_files for r in rows)
    tokens = sum(max(1, r.get("n_tokens", 0)) for rows in generation_files for r in rows)
    return f"{forwards / tokens:.1f} fwd/token" if forwards else ""


@step
def routing_summary(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Share of emitted tokens per expert on each benchmark, for each routed method."""
    from fusionroute.io import atomic_write_text

    names = params["expert_names"]
    summary: dict = {}
    for key, path in inputs.items():
        method_name, benchmark = key.split("__")
        counts = [0] * len(names)
        for row in read_jsonl(path):
            for e in row.get("expert_ids", []):
                counts[e] += 1
        total = max(1, sum(counts))
        summary.setdefault(method_name, {})[benchmark] = {n: c / total for n, c in zip(names, counts)}
    write_json(outputs["json"], summary)
    lines = []
    for method_name, per_bench in summary.items():
        lines += [f"### {method_name}", "", "| Benchmark | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for benchmark, shares in per_bench.items():
            lines.append(f"| {benchmark} | " + " | ".join(f"{shares[n]:.2f}" for n in names) + " |")
        lines.append("")
    atomic_write_text(outputs["md"], "\n".join(lines))

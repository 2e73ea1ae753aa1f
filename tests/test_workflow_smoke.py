"""End to end: the whole workflow on config/smoke.yaml, in a scratch copy of the repository.

Builds data, tokenizer, base, experts, FusionRoute, every baseline, generation, scoring and both
tables; then checks the tables, that Snakemake has nothing left to do, and that a rebuild from
scratch with the same config gives byte-identical tables (every step is seeded).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from workflow_helpers import SNAKEMAKE, copy_workflow

TARGETS = ["results/table1.tex", "results/table2.tex", "results/smoke/routing_summary.json"]


def _snakemake(cwd: Path, *args: str, check: bool = True, overlays: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "FUSIONROUTE_NO_PROGRESS": "1"}
    proc = subprocess.run([*SNAKEMAKE, *args, "--cores", "2", "--configfile", "config/smoke.yaml", *overlays],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in (cwd / "logs").rglob("*.log")
                         if "Error" in p.read_text() or "Traceback" in p.read_text())
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs}")
    return proc


@pytest.mark.slow
def test_smoke_workflow_end_to_end_and_deterministic(tmp_path):
    work = copy_workflow(tmp_path)
    _snakemake(work, *TARGETS)

    table1 = (work / "results/table1.tex").read_text()
    for label in ("Math Expert", "Code Expert", "Instruct Expert", "Sequence Selection", "Collab",
                  "Fine-tuned Model", "DARE", "TaskArithmetic", "FusionRoute"):
        assert label in table1, label
    assert r"\toprule" in table1 and r"\bottomrule" in table1 and "GSM8K & MATH500 & MBPP & HumanEval & IfEval & Avg." in table1
    table2 = (work / "results/table2.tex").read_text()
    assert "FusionRoute w/o complementary logits" in table2
    # each world keeps its own tables; results/table1.* are copies of the world just built
    for name in ("table1.tex", "table1.md", "table2.tex", "table2.md"):
        assert (work / "results" / name).read_bytes() == (work / "results/smoke" / name).read_bytes(), name

    # every cell was really generated and scored
    cell = work / "results/smoke/tiny/fusionroute/gsm8k"
    rows = [json.loads(line) for line in (cell / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("expert_ids" in r and len(r["expert_ids"]) == r["n_tokens"] for r in rows)
    scores = json.loads((cell / "scores.json").read_text())
    assert scores["n"] == 6 and 0.0 <= scores["score"] <= 1.0 and len(scores["samples"]) == 6
    routing = json.loads((work / "results/smoke/routing_summary.json").read_text())
    assert set(routing) >= {"fusionroute", "fusionroute_routing_only"}

    dry = _snakemake(work, "-n", *TARGETS)
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # rebuilding from scratch with the same config gives the same tables
    first = {t: (work / t).read_text() for t in ("results/table1.tex", "results/table2.tex")}
    shutil.rmtree(work / "results")
    shutil.rmtree(work / "build")
    _snakemake(work, "results/table1.tex", "results/table2.tex")
    assert {t: (work / t).read_text() for t in first} == first

    _check_sweep(work)   # on the rebuilt world


def _job_counts(output: str) -> dict[str, int]:
    """Snakemake's dry-run "Job stats" table -> {rule: count}."""
    lines = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _check_sweep(work: Path) -> None:
    """The README's sweep (config/sweep.yaml: FusionRoute at beta 0.1 and 0.5, one new method) on the
    built world: only the new router and the new cells are made, and one table holds every row."""
    sweep = ("config/sweep.yaml",)
    fusionroute_cell = work / "results/smoke/tiny/fusionroute/gsm8k/generations.jsonl"
    before = fusionroute_cell.stat().st_mtime_ns, fusionroute_cell.read_bytes()
    dry = _snakemake(work, "-n", "results/table1.tex", overlays=sweep)
    assert _job_counts(dry.stdout) == {"router_mix_variant": 1, "generate": 10, "score": 10, "table1": 1,
                                       "publish_table": 1}, dry.stdout[-3000:]
    _snakemake(work, "results/table1.tex", overlays=sweep)
    table1 = (work / "results/table1.md").read_text()
    for label in ("FusionRoute (mix.beta=0.1)", "FusionRoute (mix.beta=0.5)", "FusionRoute routing only (after CDPO)"):
        assert label in table1, label
    assert (work / "build/smoke/tiny/variants/router@mix.beta~0.5").is_dir()
    settings = json.loads((work / "results/smoke/tiny/fusionroute@mix.beta~0.5/gsm8k/settings.json").read_text())
    assert "router@mix.beta~0.5" in json.dumps(settings)
    assert (fusionroute_cell.stat().st_mtime_ns, fusionroute_cell.read_bytes()) == before   # the old cell stayed
    assert (work / "build/smoke/tiny/logs/router_mix@mix.beta~0.5.json").is_file()
    # trained with the other beta from the same SFT router: other weights
    weights = "model.safetensors"
    assert ((work / "build/smoke/tiny/variants/router@mix.beta~0.5" / weights).read_bytes()
            != (work / "build/smoke/tiny/router" / weights).read_bytes())

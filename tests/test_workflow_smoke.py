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


def _snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "FUSIONROUTE_NO_PROGRESS": "1"}
    proc = subprocess.run([*SNAKEMAKE, *args, "--cores", "2", "--configfile", "config/smoke.yaml"],
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

"""The README's operations commands, run as written (in a scratch copy of the workflow)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from workflow_helpers import REPO, SNAKEMAKE, copy_workflow  # noqa: E402

README = (REPO / "README.md").read_text()


def test_readme_names_these_commands():
    for command in ("./run snakemake --unlock", "./run snakemake --cores all --rerun-incomplete results/table1.tex",
                    "./run python -m fusionroute.provenance results/tiny",
                    "./run snakemake --cores all results/table1.tex --configfile config/tiny.yaml config/sweep.yaml"):
        assert command in README, command


@pytest.mark.slow
def test_kill_9_then_unlock_and_rerun_incomplete(tmp_path):
    """kill -9 of snakemake mid-job leaves its lock; `--unlock` removes it and
    `--rerun-incomplete` plans the interrupted job again."""
    work = copy_workflow(tmp_path / "wf")
    target = ["--configfile", "config/smoke.yaml"]
    env = {**os.environ, "FUSIONROUTE_WARM": "0"}
    proc = subprocess.Popen(SNAKEMAKE + ["--cores", "1", "build/smoke/data/preferences.jsonl", *target], cwd=work,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    log = work / "logs" / "smoke" / "tiny_data.log"
    deadline = time.time() + 120
    while not log.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert log.exists(), "the job never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    locked = subprocess.run(SNAKEMAKE + ["--cores", "1", "build/smoke/data/preferences.jsonl", *target], cwd=work,
                            env=env, capture_output=True, text=True, timeout=300)
    assert locked.returncode != 0 and "cannot be locked" in (locked.stdout + locked.stderr), locked.stderr[-2000:]
    unlock = subprocess.run(SNAKEMAKE + ["--unlock", *target], cwd=work, capture_output=True, text=True, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    again = subprocess.run(SNAKEMAKE + ["-n", "--rerun-incomplete", "build/smoke/data/preferences.jsonl", *target],
                           cwd=work, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "tiny_data" in again.stdout


def test_provenance_cli_on_a_results_folder(tmp_path):
    cell = tmp_path / "tiny" / "tiny" / "fusionroute" / "gsm8k"
    cell.mkdir(parents=True)
    (cell / "settings.json").write_text('{"kind": "fusionroute"}')
    out = subprocess.run([sys.executable, "-m", "fusionroute.provenance", str(tmp_path / "tiny")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "every cell was made by the current code" in out.stdout

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


def _planned_priorities(work: Path) -> dict[str, float]:
    """Rule name (`tiny_expert[<expert>]` for the experts) -> priority of the jobs a dry run of the
    tiny Table 1 plans."""
    plan = subprocess.run(SNAKEMAKE + ["-n", "--cores", "2", "results/table1.tex"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    priorities: dict[str, float] = {}
    job = None
    for line in plan.stdout.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            job = line.split()[1].rstrip(":")
        elif job and line.startswith("wildcards:") and "expert=" in line:
            job += "[" + line.split("expert=")[1].split(",")[0] + "]"
        elif job and line.startswith("priority:"):
            priorities[job] = float(line.split()[1])
        elif job and not line:
            priorities.setdefault(job, 0.0)
            job = None
    return priorities


def test_the_longest_chain_is_scheduled_first(tmp_path):
    """On two cores the build's length is its longest chain: the expert with the most steps starts
    first, then the others by steps, and the expert features and the router's two phases go before
    any other ready job (Snakemake's own order had queued the math expert behind the two others)."""
    priorities = _planned_priorities(copy_workflow(tmp_path / "wf"))
    experts = {name: priorities[f"tiny_expert[{name}]"] for name in ("math", "code", "instruct")}
    assert experts["math"] > experts["instruct"] > experts["code"] > 0  # 1400, 600 and 200 steps
    chain = [priorities[rule] for rule in ("expert_features", "router_sft", "router_mix")]
    assert min(chain) > 0 and max(chain) < experts["code"]
    others = {job: p for job, p in priorities.items()
              if not job.startswith(("tiny_expert", "expert_features", "router_sft", "router_mix"))}
    assert {"reward_model", "finetuned_sft", "generate"} <= set(others) and set(others.values()) == {0.0}

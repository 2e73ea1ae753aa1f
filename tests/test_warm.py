"""The warm step server (fusionroute/warm.py): same results as a fresh process, logs at the file
descriptor level, one server per environment, and a cancelled job's process is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fusionroute import warm

CLIENT = "import json, sys; from fusionroute import warm; sys.exit(warm.submit(json.loads(sys.argv[1])))"


def gsm8k_job(tmp: Path, name: str) -> dict:
    (tmp / "data.jsonl").write_text(json.dumps({"question": "2 + 3?", "answer": "#### 5", "id": "0"}) + "\n")
    (tmp / "gen.jsonl").write_text(json.dumps({"id": "0", "prompt": "p", "completion": "The answer is 5",
                                               "n_tokens": 4}) + "\n")
    return {"step": "score", "inputs": {"generations": str(tmp / "gen.jsonl"), "data": str(tmp / "data.jsonl")},
            "outputs": {"scores": str(tmp / f"{name}.json")}, "params": {"benchmark": "gsm8k"}, "threads": 1,
            "gpu": 0, "log": str(tmp / f"{name}.log")}


def client(job: dict, cwd: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(job)], cwd=cwd,
                            env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_job_through_the_server_equals_one_in_process(tmp_path):
    job = gsm8k_job(tmp_path, "warm")
    proc = client(job, tmp_path)
    assert proc.wait(timeout=180) == 0, proc.stderr.read()
    in_process = gsm8k_job(tmp_path, "cold")
    assert warm.run_job(in_process) == 0
    assert (tmp_path / "warm.json").read_text() == (tmp_path / "cold.json").read_text()
    assert json.loads((tmp_path / "warm.json").read_text())["score"] == 1.0
    # a failing job reports its traceback in its own log and a non-zero status
    bad = {**gsm8k_job(tmp_path, "bad"), "params": {"benchmark": "nonsense"}}
    proc = client(bad, tmp_path)
    assert proc.wait(timeout=60) != 0
    assert "Traceback" in (tmp_path / "bad.log").read_text() and "nonsense" in (tmp_path / "bad.log").read_text()


def test_one_server_per_environment_and_source():
    env = dict(os.environ)
    assert warm.socket_path(env) == warm.socket_path(dict(env))
    assert warm.socket_path(env) != warm.socket_path({**env, "HF_HUB_OFFLINE": "0" if env.get("HF_HUB_OFFLINE") == "1" else "1"})


def _children_in(cwd: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(cwd):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_cancelling_a_job_kills_its_process(tmp_path):
    fifo = tmp_path / "never_written.jsonl"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: a job that never ends
    job = {**gsm8k_job(tmp_path, "hang"), "inputs": {"generations": str(fifo), "data": str(fifo)}}
    work = tmp_path / "job_cwd"
    work.mkdir()
    proc = client(job, work)
    deadline = time.monotonic() + 120
    running: list[int] = []
    while not running and time.monotonic() < deadline:   # the client itself also works in `work`
        time.sleep(0.2)
        running = [p for p in _children_in(work) if p != proc.pid]
    assert running, "the job never started"
    proc.send_signal(signal.SIGKILL)   # what Snakemake does to a cancelled job's process
    proc.wait()
    deadline = time.monotonic() + 20
    while any(p in _children_in(work) for p in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in running if p in _children_in(work)], "the job's process outlived its client"

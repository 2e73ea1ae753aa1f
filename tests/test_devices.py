"""Each local GPU job gets its own device: real processes claim GPUs through lock files."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

CLAIM = ("import sys, time; from fusionroute.devices import claim_gpus; "
         "ids = claim_gpus(int(sys.argv[1]), poll_s=0.05); import os; "
         "print(time.monotonic(), os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(float(sys.argv[2]))")


def job(tmp_path, n: int, hold_s: float, **env) -> subprocess.Popen:
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "FUSIONROUTE_GPU_LOCK_DIR": str(tmp_path), **env}
    environment.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(n), str(hold_s)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_distinct_gpus_and_a_third_waits(tmp_path):
    first, second = job(tmp_path, 1, 1.5), job(tmp_path, 1, 1.5)
    time.sleep(0.5)
    third = job(tmp_path, 1, 0)
    outs = [p.communicate(timeout=30) for p in (first, second, third)]
    started = [float(o[0].split()[0]) for o in outs]
    devices = [o[0].split()[1] for o in outs]
    assert sorted(devices[:2]) == ["0", "1"]                 # two jobs, two different cards
    assert devices[2] in ("0", "1") and started[2] >= min(started[:2]) + 1.0   # the third waited for one
    assert "waiting for 1 free GPU" in outs[2][1]


def test_a_killed_job_frees_its_gpu(tmp_path):
    holder = job(tmp_path, 2, 60)
    holder.stdout.readline()                 # it holds both GPUs
    holder.kill()                            # kill -9: the kernel drops its locks
    holder.wait()
    out, _ = job(tmp_path, 2, 0).communicate(timeout=30)
    assert out.split()[1] == "0,1"


def test_scheduler_assigned_devices_are_kept_and_impossible_requests_fail(tmp_path, monkeypatch):
    out, _ = job(tmp_path, 1, 0, SLURM_JOB_ID="42", CUDA_VISIBLE_DEVICES="3").communicate(timeout=30)
    assert out.split()[1] == "3"
    from fusionroute import devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(RuntimeError, match="needs 2 GPUs but only 1"):
        devices.claim_gpus(2)

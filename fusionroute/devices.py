"""Give each GPU job of a local run its own GPU(s).

Snakemake counts a `gpu` resource (`--resources gpu=N` caps how many GPU jobs run at once) but
does not say WHICH device a job gets: without help every job opens cuda:0. Under SLURM the
scheduler sets CUDA_VISIBLE_DEVICES per job; on one machine we claim devices ourselves with one
lock file per GPU (`fcntl.flock`, released by the kernel when the job's process ends, also on a
crash or kill -9) and set CUDA_VISIBLE_DEVICES before anything initialises CUDA. A job that finds
every GPU taken waits for one (and says so), so even a run without `--resources gpu=N` never
stacks two jobs on one card.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

LOCK_DIR_ENV = "FUSIONROUTE_GPU_LOCK_DIR"
_held: list[IO] = []  # open lock files of this process: the claim lasts as long as the process


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def scheduler_assigned() -> bool:
    """SLURM (and similar) already gave this job its devices."""
    return "SLURM_JOB_ID" in os.environ and "CUDA_VISIBLE_DEVICES" in os.environ


def _lock_dir() -> Path:
    default = Path(os.environ.get("TMPDIR", "/tmp")) / f"fusionroute-gpu-slots-{os.getuid()}"
    path = Path(os.environ.get(LOCK_DIR_ENV, default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def claim_gpus(n: int, poll_s: float = 2.0, timeout_s: float | None = None) -> list[str]:
    """Claim `n` free GPUs for this process and restrict CUDA to them; returns their ids.

    n = 0, a scheduler-assigned job, or a machine without GPUs: nothing to do (returns []).
    Raises RuntimeError if more GPUs are asked for than the machine has, or after `timeout_s`."""
    if n <= 0 or scheduler_assigned():
        return []
    gpus = visible_gpus()
    if not gpus:
        return []
    if n > len(gpus):
        raise RuntimeError(f"this job needs {n} GPUs but only {len(gpus)} are visible ({','.join(gpus)})")
    start, warned = time.monotonic(), False
    while True:
        claimed: list[tuple[str, IO]] = []
        for gpu in gpus:
            handle = open(_lock_dir() / f"gpu{gpu}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            claimed.append((gpu, handle))
            if len(claimed) == n:
                break
        if len(claimed) == n:
            _held.extend(h for _, h in claimed)
            ids = [g for g, _ in claimed]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            return ids
        for _, handle in claimed:  # all or nothing: never hold some GPUs while waiting for more
            handle.close()
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise RuntimeError(f"no {n} free GPU(s) among {gpus} after {timeout_s:.0f} s")
        if not warned:
            print(f"[devices] waiting for {n} free GPU(s) among {gpus} (others are in use by running jobs)",
                  file=sys.stderr, flush=True)
            warned = True
        time.sleep(poll_s)

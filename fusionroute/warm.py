"""Warm start for workflow steps: import torch and transformers once, fork a child per job.

Every Snakemake job is a fresh Python process, and importing torch + transformers costs 3-5 CPU
seconds, more than most tiny-world and rehearsal jobs spend on their work (the rehearsal runs 247
jobs). On one machine the step runner (workflow/scripts/step.py) therefore hands its job to a
local server that has the heavy modules imported and forks a child per job: the child changes to
the job's directory and environment, sends its stdout/stderr (file descriptors 1 and 2, so
subprocesses and C libraries too) to the job's log, claims its GPU (fusionroute.devices) and runs
the step. Results are the same as in a fresh process: the server imports modules but never runs a
model, seeds nothing (but langdetect's fixed seed, which the IFEval scorer sets on every import)
and never initialises CUDA, and every step seeds itself.

- One server per (Python, package source, environment): a change to any .py file of the package,
  or to the environment, starts a new server, so a job never runs stale code.
- The client waits for the child's exit status; if the client is killed (Snakemake cancelling a
  job, Ctrl-C), the server kills the child's whole process group.
- The server exits after `IDLE_S` seconds without jobs.
- Not used under SLURM (each job is alone on its node) or with FUSIONROUTE_WARM=0; if the server
  cannot be reached the job runs in-process, as before.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

ENV_SWITCH = "FUSIONROUTE_WARM"
IDLE_S = 30.0
PACKAGES = ("fusionroute", "baselines")
_VOLATILE_ENV = ("_", "PWD", "OLDPWD", "SHLVL")


def run_job(job: dict) -> int:
    """Run one step as described by `job` in this process; returns the exit status (0 = done)."""
    from fusionroute.devices import claim_gpus
    from fusionroute.steps import run_step

    with open(job["log"], "w") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            # a local GPU job claims its own device(s) before anything initialises CUDA
            gpus = claim_gpus(int(job.get("gpu", 0) or 0))
            if gpus:
                print(f"[step] running on GPU(s) {','.join(gpus)}", flush=True)
            run_step(job["step"], job["inputs"], job["outputs"], job["params"], job["threads"])
            return 0
        except BaseException:  # noqa: BLE001 - reported in the job's log, as Snakemake shows it
            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


def _source_key() -> str:
    """Changes when any .py file of the packages changes (path, size, mtime)."""
    digest = hashlib.sha256(sys.executable.encode())
    root = Path(__file__).resolve().parents[1]
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _env_key(env: dict) -> str:
    items = sorted((k, v) for k, v in env.items() if k not in _VOLATILE_ENV and not k.startswith("SNAKEMAKE"))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def socket_path(env: dict | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    key = hashlib.sha256((_source_key() + _env_key(env)).encode()).hexdigest()[:16]
    # unix socket paths are limited to ~107 bytes: keep it short
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"fr-warm-{os.getuid()}-{key}.sock"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0" and "SLURM_JOB_ID" not in os.environ


# ----------------------------------------------------------------------------------------------
# client


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _start_server(path: Path, timeout_s: float = 120.0) -> socket.socket | None:
    """Start the server for `path` unless another client is starting it; wait until it listens."""
    lock_path = path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others find it running
        sock = _connect(path)
        if sock is not None:
            return sock
        if path.exists():
            path.unlink()  # a dead server's socket
        log = open(path.with_suffix(".log"), "a")
        subprocess.Popen([sys.executable, "-m", "fusionroute.warm", str(path)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True, close_fds=True, cwd="/")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sock = _connect(path)
            if sock is not None:
                return sock
            time.sleep(0.05)
    return None


def submit(job: dict) -> int:
    """Run `job` through the warm server (started on first use); in-process when that fails."""
    job = {**job, "cwd": os.getcwd(), "env": dict(os.environ)}
    path = socket_path(job["env"])
    sock = _connect(path) or _start_server(path)
    if sock is None:
        return run_job(job)
    with sock:
        sock.sendall(json.dumps(job).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                break
            reply += chunk
    if not reply.endswith(b"\n"):
        raise RuntimeError(f"the warm step server ({path}) closed the connection before the job ended; "
                           f"see {path.with_suffix('.log')}")
    return int(reply)


# ----------------------------------------------------------------------------------------------
# server


def _child(job: dict, listener: socket.socket, conns: list[socket.socket]) -> None:
    """In the forked child: become the job (directory, environment, process group) and run it."""
    os.setpgid(0, 0)  # its own process group: the server can kill it and everything it started
    listener.close()
    for conn in conns:
        conn.close()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    status = 1
    try:
        status = run_job(job)
    finally:
        os._exit(status)


def serve(path: Path, idle_s: float = IDLE_S) -> None:
    """Import the heavy modules, listen on `path`, fork a child per job; exit when idle."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: F401

    from fusionroute.steps import load_steps

    load_steps()
    from fusionroute.generation import method_kinds

    method_kinds()  # imports every generator module
    # NLTK and the IFEval checkers (3-4 CPU-s of imports per IFEval scoring job otherwise); an
    # optimisation only, so a failure here is left for the scoring step itself to report
    with contextlib.suppress(Exception):
        from fusionroute.eval.ifeval import registry

        registry()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    running: dict[int, socket.socket] = {}  # child pid -> its client's connection
    last_busy = time.monotonic()
    try:
        while running or time.monotonic() - last_busy < idle_s:
            readable, _, _ = select.select([listener, *running.values()], [], [], 0.2)
            for sock in readable:
                if sock is listener:
                    conn, _ = listener.accept()
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = conn.recv(1 << 16)
                        if not chunk:
                            break
                        data += chunk
                    if not data.endswith(b"\n"):
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _child(json.loads(data), listener, [conn, *running.values()])
                    with contextlib.suppress(OSError):
                        os.setpgid(pid, pid)  # also here, so that a kill right away finds the group
                    running[pid] = conn
                else:  # a client went away before its job ended: stop the job
                    pid = next(p for p, c in running.items() if c is sock)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    conn = running.pop(pid)
                    code = os.waitstatus_to_exitcode(status)
                    with contextlib.suppress(OSError):
                        conn.sendall(f"{code if code >= 0 else 1}\n".encode())
                    conn.close()
                    last_busy = time.monotonic()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))

"""Run untrusted Python programs (model-written code plus its tests) in a child-process sandbox.

Every code scorer (MBPP, HumanEval) goes through :func:`run_program` / :func:`run_programs`;
nothing else in the package executes generated code.

Process layout (one sandbox run)::

    harness thread ── Popen ──> [unshare ...] python -I -S sandbox_child.py cfg   ("init")
                                   └─ fork ──> guard   (the program's parent)
                                                 └─ fork ──> program           (exec()s the code)

* ``init`` sets everything up while it still has root's powers (joins a fresh cgroup, mounts a
  size-limited tmpfs over the working directory, remounts every other mount read-only), then
  applies rlimits, drops all capabilities and sets no_new_privs, and forks. Inside a PID
  namespace it is PID 1, so when it exits the kernel kills every process the program left
  behind; it also reaps orphans so zombies never pile up against the pids limit.
* ``guard`` only waits for the program and exits with its status. It exists so that
  ``os.kill(os.getppid(), 9)`` has a killable target whose death ``init`` observes (PID 1
  itself is immune to SIGKILL from inside its namespace, which would let such a program go on
  and "pass").
* ``program`` compiles the code with ``optimize=0`` (asserts can never be compiled away) and
  ``exec``s it as ``__main__``. Only if ``exec`` returns normally does it write
  ``PASS <nonce>`` to a dedicated result pipe and ``os._exit(0)``.

Pass criterion (checked by the harness, :func:`_classify`): the result pipe holds the exact
``PASS <nonce>`` line, the process tree exited with status 0, and no limit fired. The nonce is
random per run, reaches the child through a pipe that ``init`` reads and closes before any
untrusted code runs, and never appears in argv, the environment or on disk. Hence
``exit(0)``/``sys.exit(0)``/``raise SystemExit`` before the tests (caught, reported as
``EXC SystemExit``), ``os._exit(0)`` (status 0 but no sentinel), patched ``print``/``sys.stdout``/
``os.write``/``os._exit``/builtins (the sentinel uses references captured before the program
ran), a killed guard/parent (status != 0) and a killed or timed-out program are all failures.

Isolation actually achieved depends on the machine. :func:`detect_isolation` tries set-ups
from strongest to weakest (namespaces + read-only mounts + cgroups; namespaces + cgroups;
cgroups only; nothing) by really running a passing and a failing probe program under each, and
keeps the first that behaves -- so a machine that refuses, e.g., the remounts degrades instead of
turning every program into an error. :class:`Isolation` records what is in force (scores.json
carries it under "sandbox"). FUSIONROUTE_SANDBOX=none forces the weakest set-up.

* network: a fresh, empty network namespace (``unshare --net``; only a down loopback), else a
  preamble that replaces the ``socket`` API -- weaker: ctypes/``_socket`` tricks can bypass it.
* processes: a fresh PID namespace (no view of, or signals to, host processes; the whole tree
  dies with ``init``) plus a per-run pids cgroup (hard cap on tasks, counts threads) when the
  cgroup fs is writable (root); else RLIMIT_NPROC, which only binds for a non-root uid (root is
  exempt from it in the kernel) -- as root without cgroups a fork bomb is bounded only by the
  wall-clock timeout and the kill of the whole namespace. Without a PID namespace, stragglers
  (even ones that called setsid()) are killed through the cgroup; without either, only the
  process group is killed, so a setsid() daemon can outlive the run (weaker). Killed orphans
  outside a PID namespace are reaped by the host's init, not by us.
* memory: RLIMIT_AS per process (a 10 GB allocation fails with MemoryError) plus a per-run
  memory cgroup when available (bounds the sum over a fork bomb).
* filesystem: a private mount namespace in which every mount is read-only except a fresh,
  size-limited tmpfs over the run's working directory (so writes/deletes elsewhere fail with
  EROFS and nothing the program writes survives the run). Without a mount namespace the
  program runs in a fresh temp directory (deleted afterwards) but can write wherever its uid
  may -- as root that is nearly everywhere (documented weaker guarantee).
* privileges: all capabilities dropped (bounding set included) and no_new_privs, so the root
  uid inside cannot remount, escape the cgroup or regain privileges via setuid binaries. The
  uid stays 0 because the interpreter may live under a root-only directory (as on the dev
  machine, /root/.pyenv); reading root-owned files is therefore still possible.

Not defended against (documented limits): code that deliberately introspects the bootstrap's
frames/memory to read the nonce, or tampers with the tests' objects (e.g. returns an object
whose ``__eq__`` is always True). Model outputs are treated as buggy, not adversarial-by-design.
"""
from __future__ import annotations

import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

PASSED, FAILED, TIMEOUT, ERROR, KILLED = "passed", "failed", "timeout", "error", "killed"
STATUSES = (PASSED, FAILED, TIMEOUT, ERROR, KILLED)

_CGROUP_PREFIX = "fusionroute-sbx-"
_RESULT_CAP = 4096          # bytes read from the result pipe (sentinel + exception summary)
_DRAIN_AFTER_EXIT_S = 0.5   # how long stragglers may keep a pipe open after the tree exited


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run resource limits. Defaults suit MBPP/HumanEval-sized programs on a small box."""

    timeout_s: float = 10.0             # wall clock for the whole run
    memory_mb: int = 2048               # RLIMIT_AS per process, and the memory cgroup limit
    max_tasks: int = 64                 # pids cgroup (processes+threads) / RLIMIT_NPROC
    max_output_bytes: int = 1 << 20     # stdout+stderr beyond this kills the run
    keep_output_bytes: int = 4096       # bytes of each stream kept in the result (head+tail)
    max_file_mb: int = 64               # RLIMIT_FSIZE and the working tmpfs size
    max_open_files: int = 256

    @property
    def cpu_seconds(self) -> int:
        """RLIMIT_CPU: a little above the wall timeout so the wall clock normally fires first."""
        return int(math.ceil(self.timeout_s)) + 1


@dataclass(frozen=True)
class Isolation:
    """What the sandbox can enforce on this machine (see module docstring)."""

    unshare_prefix: tuple[str, ...] = ()   # argv prefix entering fresh namespaces; () = none
    cgroup_dirs: tuple[tuple[str, str], ...] = ()  # (controller, parent dir) we may create under
    cgroup_version: int = 0
    remount_readonly: bool = False         # only meaningful with a mount namespace
    drop_caps: bool = False
    set_nproc: bool = True                 # RLIMIT_NPROC binds (non-root or user namespace)

    @property
    def network(self) -> str:
        return "netns" if self.unshare_prefix else "socket-preamble (bypassable)"

    def describe(self) -> dict:
        """A JSON-able summary for logs and scores.json."""
        return {
            "namespaces": " ".join(self.unshare_prefix[1:]) or "none",
            "network": self.network,
            "cgroups": [c for c, _ in self.cgroup_dirs] or "none",
            "filesystem": "read-only mounts + private tmpfs workdir" if self.remount_readonly
            else "fresh temp workdir only (writes elsewhere possible)",
            "capabilities_dropped": self.drop_caps,
            "rlimit_nproc": self.set_nproc,
        }


@dataclass
class SandboxResult:
    """Outcome of one run. `passed` is True only under the sentinel protocol above."""

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    reason: str = ""
    output_truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Child side: fusionroute/eval/sandbox_child.py, run by path with `python -I -S` (stdlib only).
# ----------------------------------------------------------------------------------------------
CHILD_PROGRAM = Path(__file__).with_name("sandbox_child.py")
_BOOTSTRAP_FAILED = 125  # sandbox_child.BOOTSTRAP_FAILED


# ----------------------------------------------------------------------------------------------
# Capability detection
# ----------------------------------------------------------------------------------------------
_ROOT_UNSHARE = ("unshare", "--net", "--pid", "--fork", "--kill-child", "--mount",
                 "--mount-proc", "--ipc", "--uts")
_USER_UNSHARE = _ROOT_UNSHARE[:1] + ("--user", "--map-root-user") + _ROOT_UNSHARE[1:]


def _probe(cmd: Sequence[str]) -> bool:
    try:
        return subprocess.run(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _cgroup_parents() -> tuple[tuple[tuple[str, str], ...], int]:
    """Controllers under which we can create per-run cgroups (root only), and the version."""
    v1 = tuple((c, f"/sys/fs/cgroup/{c}") for c in ("pids", "memory"))
    if all(_can_create_cgroup(d) for _, d in v1):
        return v1, 1
    v2_root = Path("/sys/fs/cgroup")
    try:
        enabled = (v2_root / "cgroup.subtree_control").read_text().split()
    except OSError:
        return (), 0
    if {"pids", "memory"} <= set(enabled) and _can_create_cgroup(str(v2_root)):
        return (("unified", str(v2_root)),), 2
    return (), 0


def _can_create_cgroup(parent: str) -> bool:
    probe = Path(parent) / f"{_CGROUP_PREFIX}probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "cgroup.procs").exists()
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


def _candidates(python: str) -> list[Isolation]:
    """Isolation set-ups from strongest to weakest that this machine might support."""
    is_root = os.geteuid() == 0
    prefix = _ROOT_UNSHARE if is_root else _USER_UNSHARE
    has_ns = bool(shutil.which("unshare")) and _probe([*prefix, python, "-I", "-S", "-c", "pass"])
    cgroups, version = _cgroup_parents() if is_root else ((), 0)
    # root (uid 0 of the host user namespace) is exempt from RLIMIT_NPROC; inside a user
    # namespace the count is per namespace, i.e. per run; otherwise it counts all our tasks.
    base = {"cgroup_dirs": cgroups, "cgroup_version": version, "set_nproc": not is_root}
    found = []
    if has_ns:
        found.append(Isolation(unshare_prefix=prefix, remount_readonly=True, drop_caps=True,
                               **base))
        found.append(Isolation(unshare_prefix=prefix, drop_caps=True, **base))
    if cgroups:
        found.append(Isolation(drop_caps=is_root, **base))
    found.append(minimal_isolation())
    return found


@lru_cache(maxsize=None)
def detect_isolation(python: str = sys.executable) -> Isolation:
    """The strongest set-up under which a sandboxed run actually works here (probed once, by
    running a passing and a failing program). FUSIONROUTE_SANDBOX=none forces the weakest."""
    if os.environ.get("FUSIONROUTE_SANDBOX", "").lower() == "none":
        return minimal_isolation()
    probe_limits = SandboxLimits(timeout_s=30)
    for candidate in _candidates(python):
        ok = run_program("assert True\n", probe_limits, candidate, python).passed
        if ok and run_program("assert False\n", probe_limits, candidate, python).status == FAILED:
            return candidate
        log.warning("sandbox set-up %s does not work here; trying a weaker one",
                    candidate.describe())
    return minimal_isolation()


def minimal_isolation() -> Isolation:
    """No namespaces/cgroups: rlimits, process-group kill, socket preamble, temp workdir."""
    is_root = os.geteuid() == 0
    return Isolation(drop_caps=is_root, set_nproc=not is_root)


# ----------------------------------------------------------------------------------------------
# Harness side
# ----------------------------------------------------------------------------------------------
class _Cgroup:
    """A per-run cgroup (one dir per v1 controller, or one v2 dir) with pids/memory limits."""

    def __init__(self, isolation: Isolation, limits: SandboxLimits) -> None:
        name = f"{_CGROUP_PREFIX}{uuid.uuid4().hex}"
        self.dirs: list[Path] = []
        try:
            for controller, parent in isolation.cgroup_dirs:
                path = Path(parent) / name
                path.mkdir()
                self.dirs.append(path)
                self._limit(path, controller, isolation.cgroup_version, limits)
        except OSError:
            self.remove()
            raise

    @staticmethod
    def _limit(path: Path, controller: str, version: int, limits: SandboxLimits) -> None:
        memory = str(limits.memory_mb << 20)
        if version == 2:
            (path / "pids.max").write_text(str(limits.max_tasks))
            (path / "memory.max").write_text(memory)
            (path / "memory.swap.max").exists() and (path / "memory.swap.max").write_text("0")
        elif controller == "pids":
            (path / "pids.max").write_text(str(limits.max_tasks))
        elif controller == "memory":
            (path / "memory.limit_in_bytes").write_text(memory)

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def kill_all(self) -> None:
        """SIGKILL every member until the cgroup is empty (bounded retries: forks are capped)."""
        for _ in range(50):
            pids = set()
            for procs in self.procs_files:
                try:
                    pids.update(int(p) for p in Path(procs).read_text().split())
                except OSError:
                    pass
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(100):   # killed tasks leave the cgroup asynchronously
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


class _CappedBuffer:
    """Keeps the first and last `keep/2` bytes of a stream and counts the rest."""

    def __init__(self, keep: int) -> None:
        self.half = max(keep // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail = (self.tail + chunk)[-self.half:]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        sep = b"\n...[truncated]...\n" if self.truncated else b""
        return (bytes(self.head) + sep + bytes(self.tail)).decode("utf-8", "replace")


@dataclass
class _Collected:
    stdout: _CappedBuffer
    stderr: _CappedBuffer
    result: bytes = b""
    timed_out: bool = False
    output_exceeded: bool = False


def _kill_tree(proc: subprocess.Popen, cgroup: _Cgroup | None) -> None:
    """Kill the process group (unshare/init/guard/program) and every cgroup member."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if cgroup is not None:
        cgroup.kill_all()


def _collect(proc: subprocess.Popen, result_fd: int, limits: SandboxLimits,
             deadline: float, cgroup: _Cgroup | None) -> _Collected:
    """Read stdout/stderr/result until EOF, the deadline, or the output limit."""
    out = _Collected(_CappedBuffer(limits.keep_output_bytes),
                     _CappedBuffer(limits.keep_output_bytes))
    result = bytearray()
    sinks = {proc.stdout.fileno(): out.stdout.add, proc.stderr.fileno(): out.stderr.add,
             result_fd: lambda c: result.extend(c[: max(_RESULT_CAP - len(result), 0)])}
    sel = selectors.DefaultSelector()
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                out.timed_out = True
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                _kill_tree(proc, cgroup)   # stragglers holding our pipes open die now
            if exited_at is not None and now - exited_at > _DRAIN_AFTER_EXIT_S:
                break
            for key, _ in sel.select(timeout=min(deadline - now, 0.05)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                sinks[key.fd](chunk)
            if out.stdout.total + out.stderr.total > limits.max_output_bytes:
                out.output_exceeded = True
                break
    finally:
        sel.close()
    out.result = bytes(result)
    return out


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _classify(rc: int | None, got: _Collected, nonce: str, limits: SandboxLimits) -> tuple[str, str]:
    """Map the raw outcome to (status, reason). Order matters: limits before the sentinel."""
    if got.timed_out:
        return TIMEOUT, f"wall-clock limit {limits.timeout_s:g}s exceeded"
    if got.output_exceeded:
        return KILLED, f"output limit {limits.max_output_bytes} bytes exceeded"
    lines = got.result.decode("utf-8", "replace").splitlines()
    sentinel = f"PASS {nonce}" in lines
    if rc == 0 and sentinel:
        return PASSED, "all statements ran to the end"
    if rc == _BOOTSTRAP_FAILED and not sentinel:
        return ERROR, "sandbox bootstrap failed: " + got.stderr.text()[-300:]
    sig = -rc if rc is not None and rc < 0 else (rc - 128 if rc is not None and rc > 128 else 0)
    if sig == signal.SIGXCPU:
        return TIMEOUT, f"CPU-time limit {limits.cpu_seconds}s exceeded"
    if sig:
        return KILLED, f"killed by {_signal_name(sig)}"
    exc = next((line[4:] for line in lines if line.startswith("EXC ")), None)
    if exc is not None:
        return FAILED, f"raised {exc}"
    if rc == 0:
        return FAILED, "exited with status 0 before the tests finished (no completion sentinel)"
    return FAILED, f"exited with status {rc} (no completion sentinel)"


def _child_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
            "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


def _nproc_limit(isolation: Isolation, limits: SandboxLimits) -> int | None:
    """RLIMIT_NPROC counts all tasks of the uid; outside a user namespace add what already runs."""
    if not isolation.set_nproc:
        return None
    if isolation.unshare_prefix:
        return limits.max_tasks
    uid = os.getuid()
    running = 0
    for entry in Path("/proc").iterdir():
        try:
            running += entry.name.isdigit() and entry.stat().st_uid == uid
        except OSError:
            pass
    return running + limits.max_tasks


def run_program(source: str, limits: SandboxLimits | None = None,
                isolation: Isolation | None = None, python: str | None = None) -> SandboxResult:
    """Run `source` as a fresh `__main__` under the sandbox and report how it ended."""
    limits = limits or SandboxLimits()
    python = python or sys.executable
    isolation = isolation or detect_isolation(python)
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="fusionroute-sbx-")
    cgroup = None
    try:
        Path(workdir, "program.py").write_text(source, encoding="utf-8", errors="surrogatepass")
        cgroup = _Cgroup(isolation, limits) if isolation.cgroup_dirs else None
        return _run_in(workdir, source, limits, isolation, python, cgroup, start)
    except OSError as exc:
        return SandboxResult(ERROR, None, "", "", time.monotonic() - start,
                             reason=f"could not start the sandbox: {exc}")
    finally:
        if cgroup is not None:
            cgroup.kill_all()
            cgroup.remove()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: str, source: str, limits: SandboxLimits, isolation: Isolation, python: str,
            cgroup: _Cgroup | None, start: float) -> SandboxResult:
    nonce = secrets.token_hex(16)
    nonce_r, nonce_w = os.pipe()
    result_r, result_w = os.pipe()
    cfg = {"nonce_fd": nonce_r, "result_fd": result_w, "workdir": workdir,
           "cgroup_procs": cgroup.procs_files if cgroup else [],
           "remount_readonly": isolation.remount_readonly, "drop_caps": isolation.drop_caps,
           "block_network": not isolation.unshare_prefix,
           "nproc": _nproc_limit(isolation, limits),
           "limits": {"cpu_seconds": limits.cpu_seconds, "memory_mb": limits.memory_mb,
                      "max_file_mb": limits.max_file_mb,
                      "max_open_files": limits.max_open_files}}
    cmd = [*isolation.unshare_prefix, python, "-I", "-S", str(CHILD_PROGRAM), repr(cfg)]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(nonce_r, result_w),
                                start_new_session=True, cwd=workdir, env=_child_env(workdir))
    except OSError:
        os.close(nonce_w)
        os.close(result_r)
        raise
    finally:
        os.close(nonce_r)
        os.close(result_w)
    try:
        try:
            os.write(nonce_w, nonce.encode())
        except BrokenPipeError:
            pass
        os.close(nonce_w)
        got = _collect(proc, result_r, limits, start + limits.timeout_s, cgroup)
    finally:
        _kill_tree(proc, cgroup)
        rc = proc.wait()
        os.close(result_r)
        proc.stdout.close()
        proc.stderr.close()
    status, reason = _classify(rc, got, nonce, limits)
    return SandboxResult(status, rc, got.stdout.text(), got.stderr.text(),
                         round(time.monotonic() - start, 4), reason,
                         got.stdout.truncated or got.stderr.truncated)


def default_workers() -> int:
    """One sandbox per core: runs are CPU-bound Python start-ups plus the tests themselves."""
    return max(1, len(os.sched_getaffinity(0)))


def run_programs(sources: Sequence[str], limits: SandboxLimits | None = None,
                 workers: int | None = None, isolation: Isolation | None = None,
                 python: str | None = None) -> list[SandboxResult]:
    """Run many programs in parallel (threads each supervising one child); order preserved."""
    python = python or sys.executable
    isolation = isolation or detect_isolation(python)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return list(pool.map(lambda s: run_program(s, limits, isolation, python), sources))

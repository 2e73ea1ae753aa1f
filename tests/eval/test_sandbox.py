"""Hostile and tricky programs through the sandbox: each must end as a failure (never `passed`)
while the harness and the machine stay healthy; honest programs must pass."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from fusionroute.eval import sandbox
from fusionroute.eval.sandbox import (
    FAILED, KILLED, PASSED, TIMEOUT, SandboxLimits, detect_isolation, minimal_isolation,
    run_program, run_programs)

FULL = detect_isolation()
MINIMAL = minimal_isolation()
# Cgroups without namespaces: the fallback when unshare is unavailable but we are root.
CGROUP_ONLY = (sandbox.Isolation(cgroup_dirs=FULL.cgroup_dirs, cgroup_version=FULL.cgroup_version,
                                 drop_caps=FULL.drop_caps, set_nproc=FULL.set_nproc)
               if FULL.cgroup_dirs else None)
LIMITS = SandboxLimits(timeout_s=4.0)
needs_namespaces = pytest.mark.skipif(not FULL.unshare_prefix,
                                      reason="unshare/namespaces not available here")
needs_process_cap = pytest.mark.skipif(
    not (FULL.cgroup_dirs or FULL.set_nproc),
    reason="no pids cgroup and RLIMIT_NPROC does not bind (root): fork bomb not containable")


def _live_sandbox_processes() -> list[int]:
    """Live processes started by the sandbox (their argv names a fusionroute-sbx- workdir).
    Zombies have no argv: killed orphans outside a PID namespace are reaped by the host's init
    in its own time, which is not a leak. Robust to other activity on the machine."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"fusionroute-sbx-" in (p / "cmdline").read_bytes():
                found.append(int(p.name))
        except OSError:
            pass
    return found


def _leftover_cgroups() -> list[str]:
    found = []
    for _, parent in FULL.cgroup_dirs:
        found += [p.name for p in Path(parent).iterdir()
                  if p.name.startswith(sandbox._CGROUP_PREFIX) and "probe" not in p.name]
    return found


@pytest.fixture(params=["full", "minimal"])
def isolation(request):
    return FULL if request.param == "full" else MINIMAL


# ----------------------------------------------------------------------------------------------
# Honest programs and the sentinel protocol
# ----------------------------------------------------------------------------------------------
def test_honest_program_passes(isolation):
    result = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n",
                         LIMITS, isolation)
    assert result.status == PASSED and result.passed
    assert result.exit_code == 0 and result.duration_s < LIMITS.timeout_s


def test_failing_assert_is_failed_with_reason(isolation):
    result = run_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n",
                         LIMITS, isolation)
    assert result.status == FAILED
    assert "AssertionError" in result.reason and "AssertionError" in result.stderr


def test_program_output_is_captured():
    result = run_program("import sys\nprint('hello out')\nprint('hello err', file=sys.stderr)\n",
                         LIMITS)
    assert result.passed
    assert "hello out" in result.stdout and "hello err" in result.stderr


def test_syntax_error_is_failed():
    result = run_program("def f(:\n    pass\n", LIMITS)
    assert result.status == FAILED and "SyntaxError" in result.reason


@pytest.mark.parametrize("early_exit", [
    "import sys\nsys.exit(0)",
    "exit(0)",
    "quit()",
    "raise SystemExit",
    "import os\nos._exit(0)",
    "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
    "import threading, os\nthreading.Thread(target=lambda: os._exit(0)).start()\nimport time\ntime.sleep(5)",
])
def test_exit_before_the_tests_is_a_failure(early_exit, isolation):
    program = f"def f():\n    return 1\n{early_exit}\nassert f() == 2\n"
    result = run_program(program, LIMITS, isolation)
    assert result.status != PASSED, result


@pytest.mark.parametrize("tamper", [
    # Silence every output path, then exit "successfully" without running the failing test.
    "import builtins, os, sys\nbuiltins.print = lambda *a, **k: None\nos.write = lambda *a: 0\n"
    "sys.stdout = sys.stderr = None\nos._exit(0)",
    # Patch os._exit / sys.exit so the harness's own exit would be a no-op, then fail.
    "import os, sys\nos._exit = lambda code: None\nsys.exit = lambda *a: None",
    # Replace the exception machinery names the bootstrap could look up.
    "import builtins\nbuiltins.BaseException = int\nbuiltins.SystemExit = int",
    # Forge a sentinel line on every plausible descriptor, then exit 0.
    "import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'PASS ' + b'0'*32 + b'\\n')\n"
    "    except OSError: pass\nos._exit(0)",
    # Close the result pipe (whatever it is) before a failing test.
    "import os\nfor fd in range(3, 64):\n    try: os.close(fd)\n    except OSError: pass",
])
def test_patched_builtins_and_forged_sentinels_do_not_pass(tamper, isolation):
    program = f"{tamper}\nassert 1 == 2\n"
    result = run_program(program, LIMITS, isolation)
    assert result.status != PASSED, result


def test_patching_builtins_does_not_break_an_honest_pass():
    program = ("import builtins, os, sys\nbuiltins.print = None\nos.write = None\n"
               "os._exit = None\nsys.stdout = None\nassert sum([1, 2]) == 3\n")
    assert run_program(program, LIMITS).passed


def test_asserts_are_never_optimised_away():
    assert not run_program("assert False, 'must fire'\n", LIMITS).passed


# ----------------------------------------------------------------------------------------------
# Hostile programs
# ----------------------------------------------------------------------------------------------
def test_infinite_loop_times_out(isolation):
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=2.0), isolation)
    assert result.status == TIMEOUT
    assert time.monotonic() - start < 6


def test_sleeping_program_times_out_by_wall_clock():
    result = run_program("import time\ntime.sleep(60)\n", SandboxLimits(timeout_s=1.5))
    assert result.status == TIMEOUT and result.duration_s < 4


def test_huge_allocation_fails(isolation):
    result = run_program("x = bytearray(10 * 1024 ** 3)\nassert len(x) > 0\n", LIMITS, isolation)
    assert result.status in (FAILED, KILLED) and not result.passed
    assert "MemoryError" in result.reason or result.status == KILLED


@needs_process_cap
@pytest.mark.parametrize("mode", ["full", "cgroup-only"])
def test_fork_bomb_is_contained(mode):
    isolation = FULL if mode == "full" else CGROUP_ONLY
    if isolation is None:
        pytest.skip("no cgroups here")
    program = ("import os\nwhile True:\n    try:\n        os.fork()\n"
               "    except OSError:\n        pass\n")
    result = run_program(program, SandboxLimits(timeout_s=3.0, max_tasks=32), isolation)
    assert result.status in (TIMEOUT, KILLED, FAILED) and not result.passed
    assert _live_sandbox_processes() == []      # nothing left behind
    assert _leftover_cgroups() == []
    # The machine can still start processes and the sandbox still works.
    assert run_program("assert True\n", LIMITS).passed


@pytest.mark.parametrize("mode", ["full", "cgroup-only"])
def test_daemonised_grandchild_is_killed(mode):
    """A child that escapes into its own session must not outlive the run."""
    isolation = FULL if mode == "full" else CGROUP_ONLY
    if isolation is None:
        pytest.skip("no cgroups here")
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n"
               "    os._exit(0)\nprint(os.getpid())\n")
    result = run_program(program, LIMITS, isolation)
    assert result.passed
    assert _live_sandbox_processes() == []


@pytest.mark.parametrize("victim", [
    "import os\nos.kill(os.getppid(), 9)\nimport time\ntime.sleep(1)\n",
    "import os, signal\nos.kill(0, signal.SIGKILL)\n",            # own process group
    "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
    "import time\ntime.sleep(1)\n",
])
def test_killing_parent_or_everyone_is_a_failure_and_harness_survives(victim, isolation):
    if "-1" in victim and not isolation.unshare_prefix:
        pytest.skip("kill(-1) outside a PID namespace would hit this test runner (documented)")
    result = run_program(victim + "assert True\n", LIMITS, isolation)
    assert result.status in (KILLED, FAILED) and not result.passed
    assert run_program("assert True\n", LIMITS, isolation).passed   # harness alive and well


def test_stdout_flood_is_cut_and_truncated(isolation):
    limits = SandboxLimits(timeout_s=5.0, max_output_bytes=200_000, keep_output_bytes=1000)
    result = run_program("while True:\n    print('x' * 10000)\n", limits, isolation)
    assert result.status == KILLED and "output limit" in result.reason
    assert result.output_truncated and len(result.stdout) < 1100


def test_large_but_allowed_output_is_truncated_not_fatal():
    limits = SandboxLimits(timeout_s=5.0, keep_output_bytes=200)
    result = run_program("print('y' * 50000)\n", limits)
    assert result.passed and result.output_truncated
    assert result.stdout.startswith("y" * 50) and "[truncated]" in result.stdout


@pytest.fixture
def tcp_server():
    """A real local TCP server counting accepted connections."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(1)
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_network_is_unreachable(tcp_server, isolation):
    port, accepted = tcp_server
    program = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "s.sendall(b'hi')\n")
    result = run_program(program, LIMITS, isolation)
    assert not result.passed and result.status == FAILED
    assert accepted == []


@needs_namespaces
def test_raw_socket_syscall_cannot_reach_host_either(tcp_server):
    """The namespace holds even against code bypassing the socket module via ctypes/_socket."""
    port, accepted = tcp_server
    program = ("import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
               f"s.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n")
    result = run_program(program, LIMITS)
    assert not result.passed and accepted == []


@needs_namespaces
def test_writing_or_deleting_outside_the_workdir_fails(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for action in (f"import os\nos.remove({str(victim)!r})\n",
                   f"open({str(victim)!r}, 'w').write('gone')\n",
                   f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')\n",
                   "open('/tmp/fusionroute_sbx_escape.txt', 'w').write('x')\n",
                   "import shutil\nshutil.rmtree('/work', ignore_errors=False)\n"):
        result = run_program(action + "assert True\n", LIMITS)
        assert result.status == FAILED, (action, result)
    assert victim.read_text() == "precious"
    assert not (tmp_path / "new.txt").exists()
    assert not Path("/tmp/fusionroute_sbx_escape.txt").exists()


def test_workdir_is_fresh_writable_and_deleted(isolation):
    program = ("import os\nassert os.listdir('.') == ['program.py'], os.listdir('.')\n"
               "open('scratch.txt', 'w').write('x' * 1000)\nprint(os.getcwd())\n")
    result = run_program(program, LIMITS, isolation)
    assert result.passed, result
    assert not Path(result.stdout.strip()).exists()


@needs_namespaces
def test_file_size_limit():
    result = run_program("open('big', 'wb').write(b'x' * (80 << 20))\n",
                         SandboxLimits(timeout_s=5, max_file_mb=16))
    assert not result.passed


@needs_namespaces
def test_capabilities_are_dropped():
    program = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "rc = libc.mount(b'none', b'/', None, 32 | 4096, None)\n"   # remount rw
               "assert rc != 0\n"
               "status = open('/proc/self/status').read()\n"
               "assert 'CapEff:\\t0000000000000000' in status, status\n")
    assert run_program(program, LIMITS).passed


def test_run_programs_is_parallel_and_keeps_order():
    programs = [f"assert {i} == {i if i % 3 else -1}\n" for i in range(12)]
    results = run_programs(programs, LIMITS, workers=2)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(12)]


def test_no_cgroups_or_workdirs_leak():
    run_programs(["assert True\n", "while True: pass\n"], SandboxLimits(timeout_s=1), workers=2)
    assert _leftover_cgroups() == []


def test_isolation_description_is_json_safe():
    import json

    described = json.loads(json.dumps(FULL.describe()))
    assert set(described) >= {"network", "filesystem", "namespaces"}
    assert MINIMAL.describe()["network"].startswith("socket-preamble")


def test_broken_setup_is_an_error_not_a_silent_failure():
    broken = sandbox.Isolation(unshare_prefix=("/nonexistent/unshare",))
    fds_before = len(list(Path("/proc/self/fd").iterdir()))
    for _ in range(5):
        result = run_program("assert True\n", LIMITS, broken)
        assert result.status == sandbox.ERROR and "could not start" in result.reason
    assert len(list(Path("/proc/self/fd").iterdir())) == fds_before   # no descriptor leak


def test_detection_prefers_the_strongest_working_setup():
    candidates = sandbox._candidates(sandbox.sys.executable)
    assert candidates[-1] == minimal_isolation()
    assert FULL in candidates
    if FULL.unshare_prefix:
        assert FULL.remount_readonly and FULL is not candidates[-1]


def test_forced_minimal_mode(monkeypatch):
    monkeypatch.setenv("FUSIONROUTE_SANDBOX", "none")
    detect_isolation.cache_clear()
    try:
        assert detect_isolation() == minimal_isolation()
    finally:
        monkeypatch.delenv("FUSIONROUTE_SANDBOX")
        detect_isolation.cache_clear()


def test_child_program_is_a_module_run_by_path():
    """The child ("init") is fusionroute/eval/sandbox_child.py, run by path with -I -S: importable
    by tests, stdlib only, and nothing runs on import."""
    import ast
    import subprocess
    import sys

    from fusionroute.eval import sandbox_child

    assert sandbox.CHILD_PROGRAM == Path(sandbox_child.__file__)
    assert sandbox._BOOTSTRAP_FAILED == sandbox_child.BOOTSTRAP_FAILED
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(sandbox.CHILD_PROGRAM.read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in getattr(node, "names", [])
                if isinstance(node, ast.Import)}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert sandbox_child.exit_code_of(0) == 0 and sandbox_child.exit_code_of(1 << 8) == 1
    # a malformed config fails in the bootstrap with its own status, before any program runs
    proc = subprocess.run([sys.executable, "-I", "-S", str(sandbox.CHILD_PROGRAM), "{"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == sandbox_child.BOOTSTRAP_FAILED and "sandbox bootstrap failed" in proc.stderr

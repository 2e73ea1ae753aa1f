"""The sandbox's child program ("init" in fusionroute/eval/sandbox.py's process layout).

Run by path as `python -I -S sandbox_child.py <config literal>`, never imported by the harness:
stdlib only, no package imports (the package may not be importable by the child's interpreter,
and -I keeps this file's directory off sys.path). Tests import it to check its pieces.
"""
import builtins
import ctypes
import os
import resource
import site
import sys
import types

BOOTSTRAP_FAILED = 125     # exit status when the set-up itself failed (before the program ran)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
_FLAG_OF_OPTION = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                   "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, src, target, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        raise OSError(ctypes.get_errno(), "mount %s failed" % target)


def _unescape(path):
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def setup_filesystem(libc, workdir, tmpfs_mb):
    """Private tmpfs over the workdir; every other mount re-bound read-only."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    _mount(libc, "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
           "size=%dm,mode=0700" % tmpfs_mb)
    with open("/proc/self/mountinfo") as fh:
        mounts = [line.split() for line in fh]
    for fields in mounts:
        target, opts = _unescape(fields[4]), fields[5].split(",")
        if target == workdir or "ro" in opts:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in opts:
            flags |= _FLAG_OF_OPTION.get(opt, 0)
        try:
            _mount(libc, None, target, None, flags, None)
        except OSError as exc:   # over-mounted/hidden mounts cannot be reached; fine
            if target in ("/", "/proc", "/sys", "/tmp", "/dev/shm", os.path.dirname(workdir)):
                raise


def join_cgroups(paths):
    for procs in paths:
        with open(procs, "w") as fh:
            fh.write("0")   # "0" = the writing task itself, valid inside a PID namespace


def set_limits(lim, nproc):
    def cap(which, soft, hard=None):
        resource.setrlimit(which, (soft, soft if hard is None else hard))
    cap(resource.RLIMIT_CPU, lim["cpu_seconds"], lim["cpu_seconds"] + 1)
    cap(resource.RLIMIT_AS, lim["memory_mb"] << 20)
    cap(resource.RLIMIT_FSIZE, lim["max_file_mb"] << 20)
    cap(resource.RLIMIT_NOFILE, lim["max_open_files"])
    cap(resource.RLIMIT_CORE, 0)
    if nproc is not None:
        cap(resource.RLIMIT_NPROC, nproc)


def drop_capabilities(libc):
    for cap in range(64):                      # bounding set: execve can never regain them
        libc.prctl(24, cap, 0, 0, 0)           # PR_CAPBSET_DROP (EINVAL past the last cap)
    libc.prctl(47, 4, 0, 0, 0)                 # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3, self
    data = (ctypes.c_uint32 * 6)()                  # effective/permitted/inheritable = 0
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def block_network():
    """Fallback when no network namespace exists: bypassable (ctypes), documented as weaker."""
    import socket, _socket
    def refuse(*_a, **_k):
        raise OSError(101, "network access is disabled in the sandbox")
    class NoSocket(socket.socket):
        def __init__(self, *a, **k):
            refuse()
    socket.socket = _socket.socket = NoSocket
    for name in ("create_connection", "create_server", "getaddrinfo", "socketpair", "fromfd"):
        setattr(socket, name, refuse)


def exit_code_of(status):
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def run_program(source, nonce, result_fd, without_network):
    # Capture everything the sentinel path needs before untrusted code can patch it.
    write, exit_, base_exc, flush_out, flush_err = (
        os.write, os._exit, BaseException, sys.stdout.flush, sys.stderr.flush)
    if without_network:
        block_network()
    sys.argv = ["program.py"]
    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(os.getcwd(), "program.py")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    try:
        code = compile(source, "program.py", "exec", dont_inherit=True, optimize=0)
        exec(code, main.__dict__)
    except base_exc as exc:
        flush_quietly(flush_out, flush_err, base_exc)
        report_exception(exc, write, result_fd)
        exit_(1)
    flush_quietly(flush_out, flush_err, base_exc)
    write(result_fd, b"PASS " + nonce + b"\n")
    exit_(0)


def flush_quietly(flush_out, flush_err, base_exc):
    """os._exit skips buffer flushing; keep the program's output for the result."""
    for flush in (flush_out, flush_err):
        try:
            flush()
        except base_exc:
            pass


def report_exception(exc, write, result_fd):
    """Best effort: type name for the reason field, traceback tail to stderr."""
    try:
        name = type(exc).__name__
        if isinstance(exc, SystemExit):
            name += "(%r)" % (exc.code,)
        write(result_fd, ("EXC " + name[:200] + "\n").encode("utf-8", "replace"))
        import traceback
        text = "".join(traceback.format_exception(exc))
        write(2, text[-3000:].encode("utf-8", "replace"))
    except BaseException:
        pass


def main(cfg):
    nonce_fd, result_fd, workdir = cfg["nonce_fd"], cfg["result_fd"], cfg["workdir"]
    nonce = b""
    while True:
        chunk = os.read(nonce_fd, 64)
        if not chunk:
            break
        nonce += chunk
    os.close(nonce_fd)
    with open(os.path.join(workdir, "program.py"), "rb") as fh:
        source = fh.read()
    libc = _libc()
    join_cgroups(cfg["cgroup_procs"])
    if cfg["remount_readonly"]:
        setup_filesystem(libc, workdir, cfg["limits"]["max_file_mb"])
    os.chdir(workdir)
    with open("program.py", "wb") as fh:    # visible copy for tracebacks; no secret in it
        fh.write(source)
    set_limits(cfg["limits"], cfg["nproc"])
    if cfg["drop_caps"]:
        drop_capabilities(libc)
    libc.prctl(38, 1, 0, 0, 0)                 # PR_SET_NO_NEW_PRIVS
    guard = os.fork()
    if guard == 0:
        program = os.fork()
        if program == 0:
            run_program(source, nonce, result_fd, cfg["block_network"])
        _, status = os.waitpid(program, 0)
        os._exit(exit_code_of(status))
    os.close(result_fd)
    while True:                                # reap orphans (PID 1 duty) until guard is done
        pid, status = os.waitpid(-1, 0)
        if pid == guard:
            os._exit(exit_code_of(status))


def prepare_interpreter():
    """Started with -S: skipping site.main() (and the venv's .pth files, e.g. editable-install
    finders) cuts interpreter start-up from ~35 to ~10 ms. Re-add what programs may rely on:
    site-packages on sys.path (numpy & co.) and the exit()/quit() builtins."""
    sys.path.extend(p for p in site.getsitepackages() if os.path.isdir(p))
    site.setquit()


if __name__ == "__main__":
    try:
        prepare_interpreter()
        # Our own trusted config as a Python literal: eval without builtins costs nothing, whereas
        # importing json (re, enum, collections...) costs ~10 ms of every run's start-up.
        main(eval(sys.argv[1], {"__builtins__": {}}))
    except BaseException as exc:
        sys.stderr.write("sandbox bootstrap failed: %r\n" % (exc,))
        os._exit(BOOTSTRAP_FAILED)

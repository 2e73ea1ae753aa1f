"""Live progress of running jobs on the console: `python -m fusionroute.progress watch logs`.

Every step writes its progress bars (tqdm: samples, tokens or steps, rate, ETA) into its own log
under logs/, and Snakemake's console shows only "N of M steps done". The watcher reads the newest
bar of every log that changed recently and prints one line per running job, so the rate and ETA
of a long step are where the user is looking. `./run snakemake` starts it beside every build
(FUSIONROUTE_PROGRESS_EVERY=0 turns it off); it reads files only, so it works for SLURM jobs too
when logs/ is on a shared file system.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# tqdm's default bar: "<desc>: 45%|####5     | 120/264 [00:37<00:45,  3.21it/s, loss=0.3]"
_BAR = re.compile(r"(?:(?P<desc>[^\r\n|]*?):\s*)?(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>[\d.]+[kMG]?)/(?P<total>[\d.]+[kMG]?)\s*"
                  r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+),\s*(?P<rate>[^,\]]+)")
TAIL_BYTES = 4096


@dataclass(frozen=True)
class Bar:
    job: str
    desc: str
    n: str
    total: str
    rate: str
    eta: str
    done: bool

    def line(self) -> str:
        desc = f" {self.desc}" if self.desc else ""
        return f"[progress] {self.job}:{desc} {self.n}/{self.total}, {self.rate.strip()}, ETA {self.eta}"


def last_bar(text: str, job: str) -> Bar | None:
    """The newest tqdm bar in a log's text (bars overwrite themselves with carriage returns)."""
    for segment in reversed(re.split(r"[\r\n]", text)):
        match = _BAR.search(segment)
        if match:
            g = match.groupdict()
            return Bar(job, (g["desc"] or "").strip(), g["n"], g["total"], g["rate"], g["eta"],
                       done=g["pct"] == "100" or g["n"] == g["total"])
    return None


def running_bars(logs: Path, since: float, now: float | None = None, idle_s: float = 120.0) -> list[Bar]:
    """Bars of the logs written since `since` and within the last `idle_s` seconds, unfinished."""
    now = time.time() if now is None else now
    bars = []
    for path in sorted(logs.rglob("*.log")):
        try:
            mtime = path.stat().st_mtime
            if mtime < since or now - mtime > idle_s:
                continue
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
                text = handle.read().decode("utf-8", errors="replace")
        except OSError:  # a log removed or rotated while we read it
            continue
        bar = last_bar(text, str(path.relative_to(logs).with_suffix("")))
        if bar is not None and not bar.done:
            bars.append(bar)
    return bars


def watch(logs: Path, every: float, parent: int | None = None) -> None:
    """Print the running jobs' bars every `every` seconds while `parent` (a pid) lives."""
    since = time.time()
    shown: list[str] = []
    while parent is None or _alive(parent):
        time.sleep(every)
        lines = [bar.line() for bar in running_bars(logs, since)]
        if lines and lines != shown:
            print("\n".join(lines), file=sys.stderr, flush=True)
        shown = lines


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the progress of running workflow jobs from their logs.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("watch")
    cmd.add_argument("logs", type=Path, help="the logs folder (logs/)")
    cmd.add_argument("--every", type=float, default=15.0, help="seconds between updates")
    cmd.add_argument("--parent", type=int, help="stop when this process ends (the snakemake run)")
    args = parser.parse_args(argv)
    try:
        watch(args.logs, args.every, args.parent)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The console progress watcher reads real tqdm bars from job logs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from fusionroute.progress import last_bar, running_bars

REPO = Path(__file__).resolve().parents[1]


def _write_bar(path: Path, n: int, total: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        handle.write("[generate] loading models\n")
        bar = tqdm(total=total, desc="fusionroute/gsm8k", file=handle, mininterval=0, ascii=True)
        for _ in range(n):
            bar.update(1)
        handle.flush()   # the bar stays open: the job is still running


def test_the_newest_bar_of_a_running_job(tmp_path):
    log = tmp_path / "logs/tiny/tiny/generate/fusionroute_gsm8k.log"
    _write_bar(log, 7, 20)
    bar = last_bar(log.read_text(), "generate/fusionroute_gsm8k")
    assert (bar.desc, bar.n, bar.total, bar.done) == ("fusionroute/gsm8k", "7", "20", False)
    assert "ETA" in bar.line() and "it/s" in bar.line()
    [running] = running_bars(tmp_path / "logs", since=0)
    assert running.job == "tiny/tiny/generate/fusionroute_gsm8k" and running.n == "7"


def test_finished_stale_and_old_logs_are_not_shown(tmp_path):
    logs = tmp_path / "logs"
    _write_bar(logs / "done.log", 5, 5)
    _write_bar(logs / "old.log", 1, 5)
    os.utime(logs / "old.log", (time.time() - 600, time.time() - 600))
    (logs / "plain.log").write_text("no bar here\n")
    assert running_bars(logs, since=0) == []
    _write_bar(logs / "before.log", 1, 5)
    assert running_bars(logs, since=time.time() + 1) == []     # written before the watcher started


def test_the_watcher_prints_running_jobs_and_stops_with_its_parent(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    watcher = subprocess.Popen([sys.executable, "-m", "fusionroute.progress", "watch", str(logs), "--every", "0.5",
                                "--parent", str(parent.pid)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    _write_bar(logs / "router_mix.log", 3, 10)
    parent.wait()
    _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0
    assert "[progress] router_mix: fusionroute/gsm8k 3/10" in err

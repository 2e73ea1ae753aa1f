"""File helpers shared by every stage: atomic writes and resumable JSONL.

Everything a rule writes goes through these, so a crash never leaves a half-written artefact
that Snakemake would mistake for a finished one, and long per-sample jobs can resume.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield one dict per complete line; a torn last line (a crash mid-write) is skipped."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            line = line.strip()
            if line:
                yield json.loads(line)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


class ResumableJsonl:
    """Append-only JSONL sink for per-sample results that survives a kill.

    Rows go to `<path>.partial`, flushed line by line; rows already there (from an interrupted
    run with the same `settings_hash`) are kept and their ids skipped. `finish()` writes the
    final file atomically in the order of `ids` and removes the partial file.
    """

    def __init__(self, path: str | os.PathLike, settings_hash: str):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.header = {"_settings_hash": settings_hash}
        self.done: dict[str, dict] = {}
        if self.partial.exists():
            rows = list(iter_jsonl(self.partial))
            if rows and rows[0] == self.header:
                self.done = {str(row["id"]): row for row in rows[1:]}
                print(f"[resume] {self.partial}: {len(self.done)} finished sample(s) kept", flush=True)
            elif rows:
                # made by other settings, inputs or models: never mix its rows with this run's
                print(f"[resume] {self.partial} was written by a run with other settings or models "
                      f"({rows[0].get('_settings_hash')} != {settings_hash}): starting over", flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Rewrite the partial file so a torn trailing line from the crash is dropped.
        with open(self.partial, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.header) + "\n")
            for row in self.done.values():
                handle.write(json.dumps(row) + "\n")
        self._handle = open(self.partial, "a", encoding="utf-8")

    def pending(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if str(i) not in self.done]

    def add(self, row: dict) -> None:
        self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()
        self.done[str(row["id"])] = row

    def finish(self, ids: Iterable[str]) -> list[dict]:
        self._handle.close()
        rows = [self.done[str(i)] for i in ids]
        write_jsonl(self.path, rows)
        self.partial.unlink(missing_ok=True)
        return rows


def settings_hash(obj: Any) -> str:
    """A short stable hash of JSON-serialisable settings (for resume keys and provenance)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def progress(iterable=None, **kwargs):
    """tqdm with the project's defaults; FUSIONROUTE_NO_PROGRESS=1 silences it (tests, CI logs)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 2.0)
    kwargs.setdefault("disable", os.environ.get("FUSIONROUTE_NO_PROGRESS") == "1")
    return tqdm(iterable, **kwargs)

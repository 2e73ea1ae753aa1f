"""Write the rehearsal hub: every hub id of config/paper.yaml as a local, hub-shaped folder.

`build_rehearsal_hub(out, seed)` writes into a temporary sibling folder and renames it into place
only once everything is written and `.complete` (builder version, seed, settings fingerprint) is
the last file in it, so a crash leaves no half-built hub; a later call with the same version, seed
and settings returns at once.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fusionroute.rehearsal.settings import RehearsalSettings

BUILDER = "fusionroute.rehearsal"
BUILDER_VERSION = 1
MARKER = ".complete"
MANIFEST = "rehearsal_manifest.json"


def marker_content(seed: int, s: RehearsalSettings) -> dict:
    return {"builder": BUILDER, "version": BUILDER_VERSION, "seed": seed, "settings": s.fingerprint()}


def read_marker(out: str | os.PathLike) -> dict | None:
    try:
        return json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(out: str | os.PathLike, seed: int, s: RehearsalSettings | None = None) -> bool:
    return read_marker(out) == marker_content(seed, s or RehearsalSettings())


def _run_jobs(root: Path, pool, seed: int, s: RehearsalSettings) -> dict:
    from fusionroute.rehearsal.parts import JOBS, run_parts

    if s.workers <= 1:
        return {k: v for parts in JOBS for k, v in run_parts(parts, str(root), pool, seed, s).items()}
    context = multiprocessing.get_context("spawn")  # never fork a process that holds torch/tokenizers threads
    with ProcessPoolExecutor(max_workers=min(s.workers, len(JOBS)), mp_context=context) as executor:
        futures = [executor.submit(run_parts, parts, str(root), pool, seed, s) for parts in JOBS]
        return {k: v for future in futures for k, v in future.result().items()}


def _build_into(root: Path, seed: int, s: RehearsalSettings) -> dict:
    from fusionroute.rehearsal.parts import build_datasets, make_pool  # torch, transformers: only to build

    started = time.perf_counter()
    pool = make_pool(seed, s)
    seconds = {"synthetic_items": round(time.perf_counter() - started, 2)}
    manifest = {**marker_content(seed, s), "datasets": build_datasets(root, pool, seed)}
    for part, (entry, took) in _run_jobs(root, pool, seed, s).items():
        manifest[part], seconds[part] = entry, took
    seconds["total"] = round(time.perf_counter() - started, 2)
    manifest["seconds"] = seconds
    return manifest


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished tree into place (replacing an older build)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None and not out.exists():
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_rehearsal_hub(out: str | os.PathLike, seed: int = 0, settings: RehearsalSettings | None = None) -> Path:
    """Write the rehearsal hub under `out` (see the package docstring); returns `out`."""
    s = settings or RehearsalSettings()
    out = Path(out).resolve()
    if is_complete(out, seed, s):
        return out
    if out.exists() and any(out.iterdir()) and (read_marker(out) or {}).get("builder") != BUILDER:
        raise FileExistsError(f"{out} exists and is not a rehearsal hub; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        manifest = _build_into(tmp, seed, s)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps(marker_content(seed, s), sort_keys=True) + "\n", encoding="utf-8")
        if is_complete(out, seed, s):  # another process finished the same build meanwhile
            return out
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

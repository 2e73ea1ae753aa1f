"""Which code made a result: the git commit, whether the package files were uncommitted, and a
hash of exactly the package files the step had imported.

Snakemake's `--rerun-triggers code` sees only a rule's own code, not the package under it, so an
edited loss or decoder would otherwise leave a table mixing cells made by different code without
a word. Every generated cell records `code_version()` in its settings.json; `stale_cells` compares
a recorded version with the files as they are now, the table step marks such cells, and

    python -m fusionroute.provenance results/<world>

lists them with the command that reruns them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fusionroute", "baselines")


def imported_package_files(modules: Iterable = ()) -> list[str]:
    """Repository-relative paths of the package modules loaded in this process (or `modules`)."""
    files = set()
    for module in list(modules) or list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        path = Path(path).resolve()
        try:
            rel = path.relative_to(REPO)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in PACKAGES and rel.suffix == ".py":
            files.add(rel.as_posix())
    return sorted(files)


def files_hash(files: Iterable[str], root: Path = REPO) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        path = root / rel
        digest.update(rel.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version(files: list[str] | None = None) -> dict:
    """{"commit", "dirty", "code_hash", "files"} for the package files this process imported."""
    files = imported_package_files() if files is None else sorted(files)
    status = _git("status", "--porcelain", "--", *files) if files else ""
    return {"commit": _git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(status) if status is not None else None,
            "code_hash": files_hash(files), "files": files}


def is_stale(recorded: dict | None, root: Path = REPO) -> bool:
    """Whether the files a result was made with have changed since (no record: not stale)."""
    if not recorded or "files" not in recorded:
        return False
    return files_hash(recorded["files"], root) != recorded["code_hash"]


def stale_cells(results: Path) -> list[Path]:
    """The cells (folders with settings.json) under `results` whose code has changed since."""
    stale = []
    for settings in sorted(Path(results).rglob("settings.json")):
        try:
            recorded = json.loads(settings.read_text()).get("code")
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{settings}: unreadable settings ({err})") from None
        if is_stale(recorded):
            stale.append(settings.parent)
    return stale


def rerun_command(cells: list[Path]) -> str:
    targets = " ".join(str(c / "generations.jsonl") for c in cells)
    return f"./run snakemake --cores all --forcerun {targets} -- results/table1.tex results/table2.tex"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List result cells made by code that has changed since.")
    parser.add_argument("results", help="a world's results folder, e.g. results/tiny")
    args = parser.parse_args(argv)
    cells = stale_cells(Path(args.results))
    if not cells:
        print(f"{args.results}: every cell was made by the current code")
        return 0
    print(f"{len(cells)} cell(s) were made by code that has changed since:")
    for cell in cells:
        print(f"  {cell}")
    print("rerun them (and the tables) with:\n  " + rerun_command(cells))
    return 1


if __name__ == "__main__":
    sys.exit(main())

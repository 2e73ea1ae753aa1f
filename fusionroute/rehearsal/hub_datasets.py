"""Hub-shaped local copies of the paper's datasets, filled with the tiny world's synthetic items.

Each folder has the real repository's file layout and column types, so
`datasets.load_dataset(folder, config, split=split)` takes the same code path as the hub id:
named configs come from a README.md `configs:` block (gsm8k "main", mbpp "full", humaneval
"openai_humaneval"), the others from file names (MATH-500's `test.jsonl`) or the default split
(IFEval's `ifeval_input_data.jsonl` is "train"). Parquet files get explicit Arrow schemas: type
inference would turn MBPP's always-empty `challenge_test_list` into a list of nulls.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

PERFECTBLEND = "mlabonne/open-perfectblend"
OPENHERMES = "argilla/OpenHermesPreferences"
GSM8K = "openai/gsm8k"
MATH500 = "HuggingFaceH4/MATH-500"
MBPP = "google-research-datasets/mbpp"
IFEVAL = "google/IFEval"
HUMANEVAL = "openai/openai_humaneval"

_STR = pa.string()
_MESSAGES = pa.list_(pa.struct([("content", _STR), ("role", _STR)]))
SCHEMAS = {
    PERFECTBLEND: pa.schema([("conversations", pa.list_(pa.struct([("from", _STR), ("value", _STR)]))),
                             ("source", _STR)]),
    OPENHERMES: pa.schema([("source", _STR), ("category", _STR), ("prompt", _STR),
                           ("candidates_completions", pa.list_(_STR)), ("candidate_policies", pa.list_(_STR)),
                           ("ranks", pa.list_(pa.int64())), ("rank_str", _STR), ("chosen_policy", _STR),
                           ("chosen", _MESSAGES), ("rejected_policy", _STR), ("rejected", _MESSAGES)]),
    GSM8K: pa.schema([("question", _STR), ("answer", _STR)]),
    MBPP: pa.schema([("task_id", pa.int32()), ("text", _STR), ("code", _STR), ("test_list", pa.list_(_STR)),
                     ("test_setup_code", _STR), ("challenge_test_list", pa.list_(_STR))]),
    HUMANEVAL: pa.schema([("task_id", _STR), ("prompt", _STR), ("canonical_solution", _STR), ("test", _STR),
                          ("entry_point", _STR)]),
}
POLICIES = ("teknium/OpenHermes-2.5", "NousResearch/Nous-Hermes-2-Yi-34B", "mistralai/Mixtral-8x7B-Instruct-v0.1")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are an AI assistant. Answer step by step.")


def _readme(hub_id: str, configs: Sequence[tuple[str, Sequence[tuple[str, str]]]] = ()) -> str:
    """A dataset card; `configs` = [(config_name, [(split, path glob)])] as in hub READMEs."""
    lines = ["---", f"pretty_name: {hub_id.split('/')[-1]} (rehearsal stand-in)"]
    if configs:
        lines.append("configs:")
        for i, (name, files) in enumerate(configs):
            lines.append(f"- config_name: {name}")
            lines.append("  data_files:")
            for split, path in files:
                lines += [f"  - split: {split}", f"    path: {path}"]
            if i == 0 and len(configs) > 1:
                lines.append("  default: true")
    lines += ["---", f"# {hub_id} (rehearsal stand-in)", "",
              "Synthetic rows from fusionroute.tiny in the hub dataset's schema and file layout; "
              "written by `python -m fusionroute.rehearsal`.", ""]
    return "\n".join(lines)


def _write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_card(folder: Path, hub_id: str, configs=()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(_readme(hub_id, configs), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# training data
# ----------------------------------------------------------------------------------------------
def perfectblend_rows(items: Sequence[dict], seed: int, unusable: int = 6) -> list[dict]:
    """ShareGPT rows: ~1 in 8 with a system turn first, ~1 in 10 with a second exchange (dropped by
    the loader), and `unusable` rows the loader must skip (empty answer, no answer)."""
    rng = random.Random(f"rehearsal-perfectblend|{seed}")
    rows = []
    for it in items:
        turns = [{"from": "human", "value": it["instruction"]}, {"from": "gpt", "value": it["response"]}]
        if rng.random() < 0.125:
            turns.insert(0, {"from": "system", "value": rng.choice(SYSTEM_PROMPTS)})
        if rng.random() < 0.1:
            turns += [{"from": "human", "value": "Thanks! Can you say it more briefly?"},
                      {"from": "gpt", "value": it["response"].splitlines()[-1]}]
        rows.append({"conversations": turns, "source": f"rehearsal/{it['domain']}/{it['style']}"})
    for k, at in enumerate(rng.sample(range(len(rows)), min(unusable, len(rows)))):
        turns = [dict(t) for t in rows[at]["conversations"]]
        if k % 2 == 0:
            next(t for t in turns if t["from"] == "gpt")["value"] = ""
        else:
            turns = [t for t in turns if t["from"] != "gpt"]
        rows[at] = {"conversations": turns, "source": "rehearsal/unusable"}
    return rows


def openhermes_rows(pairs: Sequence[dict], seed: int, unusable: int = 3) -> list[dict]:
    """OpenHermesPreferences rows: three ranked candidates (chosen, a truncated chosen, rejected)
    from three policies; chosen / rejected are the best / worst as user+assistant message lists."""
    rng = random.Random(f"rehearsal-openhermes|{seed}")
    category = {"math": "orca", "code": "coding", "instruct": "writing"}
    rows = []
    for i, p in enumerate(pairs):
        lines = p["chosen"].splitlines()
        middle = "\n".join(lines[: max(1, len(lines) // 2)])
        by_rank = [p["chosen"], middle, p["rejected"]]
        ranks = [0, 1, 2]  # ranks[k] = rank of candidate k (0 = best); candidates stay in policy order
        rng.shuffle(ranks)
        ranked = [POLICIES[k] for k in sorted(range(3), key=ranks.__getitem__)]
        rejected = p["chosen"] if i < unusable else p["rejected"]  # a few chosen == rejected: skipped
        rows.append({
            "source": "rehearsal", "category": category[p["domain"]], "prompt": p["instruction"],
            "candidates_completions": [by_rank[r] for r in ranks], "candidate_policies": list(POLICIES),
            "ranks": ranks, "rank_str": " > ".join(ranked), "chosen_policy": ranked[0],
            "chosen": [{"content": p["instruction"], "role": "user"}, {"content": p["chosen"], "role": "assistant"}],
            "rejected_policy": ranked[-1],
            "rejected": [{"content": p["instruction"], "role": "user"}, {"content": rejected, "role": "assistant"}],
        })
    return rows


def write_perfectblend(root: Path, rows: list[dict]) -> Path:
    folder = root / PERFECTBLEND
    _write_parquet(folder / "data" / "train-00000-of-00001.parquet", rows, SCHEMAS[PERFECTBLEND])
    _write_card(folder, PERFECTBLEND, [("default", [("train", "data/train-*")])])
    return folder


def write_openhermes(root: Path, rows: list[dict]) -> Path:
    folder = root / OPENHERMES
    _write_parquet(folder / "data" / "train-00000-of-00001.parquet", rows, SCHEMAS[OPENHERMES])
    _write_card(folder, OPENHERMES, [("default", [("train", "data/train-*")])])
    return folder


# ----------------------------------------------------------------------------------------------
# benchmarks (records already in the real schemas: fusionroute.tiny.tasks.make_benchmark)
# ----------------------------------------------------------------------------------------------
def write_benchmarks(root: Path, records: dict[str, list[dict]]) -> dict[str, Path]:
    folders = {name: root / hub for name, hub in
               (("gsm8k", GSM8K), ("math500", MATH500), ("mbpp", MBPP), ("ifeval", IFEVAL), ("humaneval", HUMANEVAL))}
    _write_parquet(folders["gsm8k"] / "main" / "test-00000-of-00001.parquet", records["gsm8k"], SCHEMAS[GSM8K])
    _write_card(folders["gsm8k"], GSM8K, [("main", [("test", "main/test-*")])])
    _write_jsonl(folders["math500"] / "test.jsonl", records["math500"])  # the hub repo is one test.jsonl
    _write_card(folders["math500"], MATH500)
    _write_parquet(folders["mbpp"] / "full" / "test-00000-of-00001.parquet", records["mbpp"], SCHEMAS[MBPP])
    _write_card(folders["mbpp"], MBPP, [("full", [("test", "full/test-*")])])
    _write_jsonl(folders["ifeval"] / "ifeval_input_data.jsonl", records["ifeval"])  # no split name: "train"
    _write_card(folders["ifeval"], IFEVAL)
    _write_parquet(folders["humaneval"] / "openai_humaneval" / "test-00000-of-00001.parquet",
                   records["humaneval"], SCHEMAS[HUMANEVAL])
    _write_card(folders["humaneval"], HUMANEVAL, [("openai_humaneval", [("test", "openai_humaneval/test-*")])])
    return folders

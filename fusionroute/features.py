"""Expert features: what the routing loss and CDPO need from the experts, computed once.

For each training sequence and each response position, every expert's log-prob of the gold
next token and its argmax next token. With these stored as a workflow artefact, the router
trains without any expert in memory (the `literal` routing loss needs nothing else), and the
CDPO bias term is a lookup.

Memory. Features are computed **one expert at a time** (load, run over every training set, free),
in **length-sorted batches under a token budget** (`max_tokens_per_batch` padded tokens per
forward), and the [batch, length, vocab] logits are **never materialised**: the expert's decoder
gives hidden states, only the response positions are kept, and the output layer (with Gemma-2's
final-logit soft-capping, tied embeddings included) runs over chunks of those positions; each
chunk's gold log-prob (fp32 logsumexp, as `losses.gather_logprobs`) and argmax (in the model
dtype, as before) are taken and the chunk is dropped. A model whose own forward does more than
`lm_head` (+ soft-capping) is detected by a probe at load time and falls back to its forward's
logits, still reduced chunk by chunk without an fp32 copy of the whole tensor.

Resume. `compute_feature_files` writes each (expert, training set, chunk of `shard_size`
consecutive samples) as one shard file, atomically, in `<output>.shards/`, next to a manifest
whose key hashes everything the numbers depend on: the encoded sequences (so the data file,
tokenizer, prompt template and max_len), each expert's source and what identifies its weights
(size, time and sampled bytes of a local checkpoint's files; a hub id's commit), the dtype, the
shared vocabulary size, the shard size and the source of this module. A rerun after a kill reuses
the finished shards; shards made under another key are discarded (and the log says so). The
token budget and the device are not part of the key (they move the numbers only by float
rounding): lowering the budget after an out-of-memory error resumes. The final file is assembled
in the original sample order, has the same format as ever (`load_features`), and the shard
directory is then removed.

Several GPUs. Under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) each process computes
every WORLD_SIZE-th shard (in the order expert, set, part, chunk) on cuda:LOCAL_RANK; rank 0
prepares the shard directories, waits for the other ranks' shards and writes the final files.
Started once with several visible GPUs (`torch.cuda.device_count() > 1`, device cuda or auto; in
the workflow: give the rule `gpu: N`, fusionroute.devices then claims N GPUs for the job), the step
starts one worker process per GPU, splits the shards the same way and assembles when all are done.
A rerun after a failure resumes from every process's shards, with any number of GPUs.
"""
from __future__ import annotations

import gc
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import PreTrainedModel

from fusionroute.data import IGNORE, Encoded, collate
from fusionroute.io import progress, read_json, settings_hash, write_json
from fusionroute.vocab import check_logit_widths, output_rows

DEFAULT_MAX_TOKENS_PER_BATCH = 16384  # padded tokens per forward (rows x longest sample)
DEFAULT_SHARD_SIZE = 1024             # samples per shard (per expert)
LOGIT_CHUNK_BYTES = 256 * 2**20       # fp32 bytes of one chunk of [positions, vocab] logits
WAIT_POLL_S = 5.0                     # how often a process of a split run looks for the others' files
SINGLE_PART = "sequences"             # a training set of plain sequences (vs preference pairs)
CODE_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# One expert over a list of sequences
# ----------------------------------------------------------------------------------------------


def positions_per_chunk(output_rows_: int, chunk_bytes: int = LOGIT_CHUNK_BYTES) -> int:
    """How many positions' logits one chunk holds: its fp32 copy stays within `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * output_rows_))


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices cut into batches of similar length, longest first: a batch's padded size (rows x
    its longest sample) stays within `max_tokens` (a longer sample goes alone), at most `max_rows`
    rows. Longest first, so a budget too large for the device fails on the first batch."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, k = [], 0
    while k < len(order):
        rows = max(1, max_tokens // max(1, lengths[order[k]]))
        if max_rows:
            rows = min(rows, max_rows)
        batches.append(order[k : k + rows])
        k += rows
    return batches


class ExpertRunner:
    """Gold-token log-probs and argmax of one expert at the response positions of a batch,
    without a [batch, length, vocab] tensor (see the module docstring)."""

    def __init__(self, model: PreTrainedModel, vocab_size: int | None, chunk_bytes: int = LOGIT_CHUNK_BYTES,
                 name: str = "expert"):
        self.model = model
        rows = output_rows(model)
        self.vocab = check_logit_widths({name: rows}, vocab_size)
        self.chunk = positions_per_chunk(rows, chunk_bytes)
        self.device = model.get_input_embeddings().weight.device
        self.head = model.get_output_embeddings()
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        self.decoder = decoder if decoder is not None and decoder is not model else None
        self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self.mode = "head" if self.head is not None and self.decoder is not None and self._probe_agrees() else "forward"
        if self.mode == "forward":
            print(f"[features] {name}: its forward does more than the output layer (+ soft-capping); "
                  "reducing the forward's logits chunk by chunk instead (more memory)")

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the model's forward does after its decoder: lm_head, then Gemma-2's soft-capping."""
        logits = self.head(hidden)
        if self.softcap:
            logits = logits / self.softcap
            logits = torch.tanh(logits)
            logits = logits * self.softcap
        return logits

    @torch.no_grad()
    def _probe_agrees(self) -> bool:
        ids = (torch.arange(3, 35, device=self.device) * 7919 % self.vocab).unsqueeze(0)
        mask = torch.ones_like(ids)
        try:
            own = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[0].float()
            ours = self.head_logits(self._hidden(ids, mask)[0]).float()
        except Exception as err:  # an exotic decoder signature: use the forward
            print(f"[features] head path unavailable ({type(err).__name__}: {err})")
            return False
        if own.shape != ours.shape:
            return False
        tol = 1e-3 if self.model.dtype == torch.float32 else 3e-2
        return bool((own - ours).abs().max() <= tol * own.abs().max().clamp(min=1.0))

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    @torch.no_grad()
    def batch_features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gold float32 [N], argmax int32 [N], per-row counts [B]) over the batch's N response
        target positions in row-major order (position t predicts labels[t + 1])."""
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        targets = batch["labels"][:, 1:].to(self.device)
        mask = targets != IGNORE
        if self.mode == "head":
            hidden = self._hidden(input_ids, attention_mask)
            selected = hidden[:, :-1][mask]
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            selected = hidden[:, :-1][mask]
        del hidden
        gold_targets = targets[mask]
        golds, argmaxes = [], []
        for start in range(0, selected.shape[0], self.chunk):
            part = selected[start : start + self.chunk]
            logits = (self.head_logits(part) if self.mode == "head" else part)[..., : self.vocab]
            full = logits.float()
            picked = full.gather(-1, gold_targets[start : start + self.chunk].unsqueeze(-1)).squeeze(-1)
            golds.append((picked - torch.logsumexp(full, dim=-1)).cpu())
            argmaxes.append(logits.argmax(-1).to(torch.int32).cpu())
            del logits, full
        counts = mask.sum(1).cpu()
        if not golds:
            return torch.zeros(0), torch.zeros(0, dtype=torch.int32), counts
        return torch.cat(golds), torch.cat(argmaxes), counts

    def run(self, encoded: Sequence[Encoded], pad_token_id: int, max_tokens_per_batch: int,
            max_rows: int | None = None, bar=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sequence, in the given order: (gold (R,) float32, argmax (R,) int32)."""
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(encoded)
        lengths = [len(e.input_ids) for e in encoded]
        for rows in token_budget_batches(lengths, max_tokens_per_batch, max_rows):
            gold, argmax, counts = self.batch_features(collate([encoded[i] for i in rows], pad_token_id))
            for i, g, a in zip(rows, gold.split(counts.tolist()), argmax.split(counts.tolist())):
                out[i] = (g.clone(), a.clone())
            if bar is not None:
                bar.update(len(rows))
        return out  # type: ignore[return-value]


def _stack(per_expert: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]]) -> list[dict[str, torch.Tensor]]:
    """Per sequence {"gold": (R, n_experts), "argmax": (R, n_experts)} from each expert's rows."""
    return [{"gold": torch.stack([g for g, _ in rows], -1), "argmax": torch.stack([a for _, a in rows], -1)}
            for rows in zip(*per_expert)]


@torch.no_grad()
def compute_expert_features(
    experts: Sequence[PreTrainedModel], encoded: Sequence[Encoded], pad_token_id: int, batch_size: int = 16,
    desc: str = "expert features", vocab_size: int | None = None,
    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH, logit_chunk_bytes: int = LOGIT_CHUNK_BYTES,
) -> list[dict[str, torch.Tensor]]:
    """Per sequence: {"gold": (R, n_experts) float32, "argmax": (R, n_experts) int32} over its
    R response target positions (labels != IGNORE after the shift), in order. `vocab_size`: the
    shared id range (fusionroute.vocab); larger ids are masked from each expert's distribution.
    Experts already in memory, one after the other; batches of at most `batch_size` rows within
    the token budget. The workflow step uses `compute_feature_files` (loads one expert at a time,
    resumable shards)."""
    vocab = check_logit_widths({f"expert {i}": output_rows(e) for i, e in enumerate(experts)}, vocab_size)
    per_expert = []
    for i, expert in enumerate(experts):
        runner = ExpertRunner(expert, vocab, logit_chunk_bytes, name=f"expert {i}")
        with progress(total=len(encoded), desc=f"{desc} ({i + 1}/{len(experts)})") as bar:
            per_expert.append(runner.run(encoded, pad_token_id, max_tokens_per_batch, batch_size, bar))
    return _stack(per_expert)


# ----------------------------------------------------------------------------------------------
# The final file (format read by the trainers)
# ----------------------------------------------------------------------------------------------


def save_features(path: str | Path, features: list[dict[str, torch.Tensor]], meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"meta": meta, "features": features}, tmp)
    tmp.replace(path)


def load_features(path: str | Path) -> tuple[list[dict[str, torch.Tensor]], dict]:
    blob = torch.load(path, weights_only=True)
    return blob["features"], blob["meta"]


def scatter_to_positions(
    values: Sequence[torch.Tensor], target_mask: torch.Tensor, fill: float = 0.0
) -> torch.Tensor:
    """Place per-sequence (R_i, n) rows back at the response positions of a (B, T-1) batch."""
    batch, width = target_mask.shape
    n = values[0].shape[-1]
    out = torch.full((batch, width, n), fill, dtype=values[0].dtype)
    for row, value in enumerate(values):
        positions = target_mask[row].nonzero().squeeze(-1)
        if len(positions) != len(value):
            raise ValueError(
                f"expert features do not line up with the batch (row {row}: {len(value)} stored vs "
                f"{len(positions)} response positions); recompute them with the same tokenizer and max_len"
            )
        out[row, positions] = value
    return out


# ----------------------------------------------------------------------------------------------
# Experts loaded one at a time, resumable shards, several processes
# ----------------------------------------------------------------------------------------------


def _sampled_file_hash(path: Path, blocks: int = 16, block: int = 1 << 16) -> str:
    """size, modification time and `blocks` evenly spaced `block`-byte reads: cheap on 16 GB of
    weights; a model retrained or re-saved in place changes them."""
    stat = path.stat()
    size = stat.st_size
    digest = hashlib.sha256(f"{size} {stat.st_mtime_ns}".encode())
    with open(path, "rb") as handle:
        if size <= blocks * block:
            digest.update(handle.read())
        else:
            for k in range(blocks):
                handle.seek((size - block) * k // (blocks - 1))
                digest.update(handle.read(block))
    return digest.hexdigest()[:16]


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub id (at `revision`) resolves to: from the local cache, else from the hub."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True)).name
    except Exception:
        pass
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision).sha
    except Exception:
        return None


def source_fingerprint(source: str | dict) -> dict:
    """The expert's source spec plus what identifies its weights: sampled hashes of the files of a
    local directory or GGUF file (a model retrained in place changes them), or a hub id's commit
    (the same whether or not the download has happened yet, so a resumed run matches)."""
    from fusionroute.models import ModelSource

    parsed = ModelSource.parse(source)
    name, extra = parsed.resolve()
    root = Path(name)
    if not root.exists():
        return {"source": source, "commit": _hub_commit(name, parsed.revision)}
    if extra.get("gguf_file"):
        files = [root / extra["gguf_file"]]
    elif root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = [root]
    return {"source": source, "files": {p.name: _sampled_file_hash(p) for p in files}}


@dataclass(frozen=True)
class ExpertSource:
    """An expert the features load when they need it (`load_causal_lm` of `source`)."""

    name: str
    source: str | dict
    dtype: str = "float32"

    def load(self, device: str) -> PreTrainedModel:
        from fusionroute.models import load_causal_lm

        return load_causal_lm(self.source, self.dtype, device)

    def fingerprint(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, **source_fingerprint(self.source)}


@dataclass
class FeatureSet:
    """One output file: `parts` maps part name -> sequences. A single part named SINGLE_PART is
    stored as a plain list (SFT sets); several parts (chosen, rejected) as one dict per sample."""

    name: str
    path: str | Path
    parts: dict[str, Sequence[Encoded]]

    @property
    def shard_dir(self) -> Path:
        return Path(str(self.path) + ".shards")


def encoded_hash(encoded: Sequence[Encoded]) -> str:
    import numpy as np

    digest = hashlib.sha256(str(len(encoded)).encode())
    for e in encoded:
        digest.update(np.asarray([len(e.input_ids)], dtype=np.int64).tobytes())
        digest.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(e.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _n_chunks(n: int, shard_size: int) -> int:
    return (n + shard_size - 1) // shard_size


@dataclass(frozen=True)
class _Unit:
    """One shard: expert `expert`'s features of chunk `chunk` of part `part` of set `set`."""

    expert: int
    set: int
    part: str
    chunk: int


@dataclass
class _Plan:
    """What every process needs (picklable): where shards go and what they are made of."""

    experts: list[ExpertSource]
    shard_dirs: list[Path]
    keys: list[str]
    units: list[_Unit]
    pad_token_id: int
    vocab_size: int
    shard_size: int
    max_tokens_per_batch: int
    max_rows: int | None
    logit_chunk_bytes: int
    data: dict[tuple[int, str, int], list[Encoded]] = field(default_factory=dict)  # (set, part, chunk) -> samples

    def shard_path(self, unit: _Unit) -> Path:
        return self.shard_dirs[unit.set] / f"{unit.part}.c{unit.chunk:05d}.e{unit.expert}.pt"


def _manifest(plan: _Plan, s: int) -> Path:
    return plan.shard_dirs[s] / "manifest.json"


def _prepare_shard_dirs(plan: _Plan, sets: Sequence[FeatureSet], log: Callable[[str], None]) -> None:
    """Keep shards made under the same key; discard any others (and say so)."""
    for s, fset in enumerate(sets):
        directory, key = plan.shard_dirs[s], plan.keys[s]
        if directory.exists():
            try:
                old = read_json(_manifest(plan, s)).get("key")
            except (OSError, ValueError):
                old = None
            if old != key:
                stale = len(list(directory.glob("*.pt")))
                log(f"[features] {fset.name}: discarding {stale} shard(s) in {directory} made with other "
                    f"inputs or settings (key {old} != {key}); starting over")
                shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(_manifest(plan, s), {"key": key, "set": fset.name, "shard_size": plan.shard_size,
                                        "parts": {p: len(seqs) for p, seqs in fset.parts.items()},
                                        "experts": [e.name for e in plan.experts], "code": CODE_VERSION})


def _save_shard(path: Path, key: str, rows: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    counts = torch.tensor([len(g) for g, _ in rows], dtype=torch.int64)
    gold = torch.cat([g for g, _ in rows]) if rows else torch.zeros(0)
    argmax = torch.cat([a for _, a in rows]) if rows else torch.zeros(0, dtype=torch.int32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"key": key, "counts": counts, "gold": gold.float(), "argmax": argmax.int()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_shard(path: Path, key: str, expected_counts: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    blob = torch.load(path, weights_only=True)
    if blob["key"] != key or blob["counts"].tolist() != expected_counts:
        raise ValueError(f"shard {path} does not belong to this run; delete {path.parent} and rerun")
    return list(zip(blob["gold"].split(expected_counts), blob["argmax"].split(expected_counts)))


def _compute_units(plan: _Plan, units: Sequence[_Unit], device: str, log: Callable[[str], None]) -> int:
    """Compute the units whose shard is missing, one expert at a time; returns how many."""
    pending = [u for u in units if not plan.shard_path(u).exists()]
    if len(pending) < len(units):
        log(f"[features] resuming: {len(units) - len(pending)} of {len(units)} shard(s) already done")
    for e, expert in enumerate(plan.experts):
        mine = [u for u in pending if u.expert == e]
        if not mine:
            continue
        model = expert.load(device)
        runner = ExpertRunner(model, plan.vocab_size, plan.logit_chunk_bytes, name=expert.name)
        total = sum(len(plan.data[(u.set, u.part, u.chunk)]) for u in mine)
        with progress(total=total, desc=f"features: {expert.name} ({len(mine)} shards)") as bar:
            for unit in mine:
                rows = runner.run(plan.data[(unit.set, unit.part, unit.chunk)], plan.pad_token_id,
                                  plan.max_tokens_per_batch, plan.max_rows, bar)
                _save_shard(plan.shard_path(unit), plan.keys[unit.set], rows)
        del runner, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return len(pending)


def _worker(rank: int, world: int, device: str, plan: _Plan) -> None:
    """One process of a split run: every `world`-th unit, starting at `rank`."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    _compute_units(plan, plan.units[rank::world], device, print)


def _spawn(plan: _Plan, devices: Sequence[str]) -> None:
    """One worker process per device, each given only the samples of its own units."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    world = len(devices)
    processes = []
    for rank, device in enumerate(devices):
        units = plan.units[rank::world]
        own = {(u.set, u.part, u.chunk) for u in units}
        sub = _Plan(**{**plan.__dict__, "data": {k: v for k, v in plan.data.items() if k in own}})
        process = context.Process(target=_worker, args=(rank, world, device, sub), name=f"features-{rank}")
        process.start()
        processes.append(process)
    for process in processes:
        process.join()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"expert feature worker(s) {failed} failed (see their output above); "
                           "rerun the step to resume from the shards written so far")


def _distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun / accelerate launch, else (0, 1, 0)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def _wait_for(paths: Sequence[Path], what: str, log: Callable[[str], None]) -> None:
    start, said = time.monotonic(), 0.0
    while True:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            return
        if time.monotonic() - said > 600:
            log(f"[features] waiting for {len(missing)} {what} (e.g. {missing[0]}); "
                f"{time.monotonic() - start:.0f} s so far")
            said = time.monotonic()
        time.sleep(WAIT_POLL_S)


def _manifest_ready(plan: _Plan, s: int) -> bool:
    try:
        return read_json(_manifest(plan, s)).get("key") == plan.keys[s]
    except (OSError, ValueError):
        return False


def compute_feature_files(
    sets: Sequence[FeatureSet], experts: Sequence[ExpertSource], pad_token_id: int, vocab_size: int, meta: dict,
    settings: dict | None = None, device: str = "cpu", shard_size: int = DEFAULT_SHARD_SIZE,
    max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH, max_rows: int | None = None,
    logit_chunk_bytes: int = LOGIT_CHUNK_BYTES, devices: Sequence[str] | None = None, rank: int | None = None,
    world: int | None = None, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write every set's feature file (`save_features(set.path, features, meta)`) from resumable
    shards, loading one expert at a time; returns {"computed": shards computed by this process,
    "shards": all shards}. `settings`: anything else the numbers depend on that the encoded
    sequences do not show (recorded in the key). Process split: `rank`/`world` (default: from
    torchrun / accelerate's environment) or `devices` (one spawned worker per device)."""
    env_rank, env_world, local_rank = _distributed_rank()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    if world > 1 and device in ("cuda", "auto") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    if devices is None and world == 1 and device in ("cuda", "auto") and torch.cuda.device_count() > 1:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if device == "auto" and not devices:
        from fusionroute.models import pick_device

        device = pick_device("auto")

    base = {"settings": settings or {}, "code": CODE_VERSION, "vocab_size": vocab_size,
            "shard_size": shard_size, "experts": [e.fingerprint() for e in experts]}
    keys, units, data = [], [], {}
    for s, fset in enumerate(sets):
        keys.append(settings_hash({**base, "set": fset.name,
                                   "parts": {p: encoded_hash(seqs) for p, seqs in fset.parts.items()}}))
        for part, seqs in fset.parts.items():
            for c in range(_n_chunks(len(seqs), shard_size)):
                data[(s, part, c)] = list(seqs[c * shard_size : (c + 1) * shard_size])
    for e in range(len(experts)):  # expert-major: a process loads each expert once
        units += [_Unit(e, s, part, c) for (s, part, c) in data]
    plan = _Plan(list(experts), [f.shard_dir for f in sets], keys, units, pad_token_id, vocab_size, shard_size,
                 max_tokens_per_batch, max_rows, logit_chunk_bytes, data)

    if rank == 0:
        _prepare_shard_dirs(plan, sets, log)
    else:
        while not all(_manifest_ready(plan, s) for s in range(len(sets))):
            time.sleep(WAIT_POLL_S)
    if devices and len(devices) > 1 and world == 1:
        before = sum(plan.shard_path(u).exists() for u in units)
        log(f"[features] {len(units)} shard(s) over {len(devices)} worker processes ({', '.join(devices)})")
        _spawn(plan, devices)
        computed = len(units) - before
    else:
        computed = _compute_units(plan, units[rank::world], (devices or [device])[0], log)
    if rank != 0:
        return {"computed": computed, "shards": len(units)}
    _wait_for([plan.shard_path(u) for u in units], "shard(s) of other processes", log)

    for s, fset in enumerate(sets):
        assembled = {}
        for part, seqs in fset.parts.items():
            counts = [sum(1 for t in e.labels[1:] if t != IGNORE) for e in seqs]
            assembled[part] = []
            for c in range(_n_chunks(len(seqs), shard_size)):  # chunk by chunk: one copy of the features
                expected = counts[c * shard_size : (c + 1) * shard_size]
                assembled[part] += _stack([_load_shard(plan.shard_path(_Unit(e, s, part, c)), keys[s], expected)
                                           for e in range(len(experts))])
        if list(assembled) == [SINGLE_PART]:
            features = assembled[SINGLE_PART]
        else:
            features = [dict(zip(assembled, values)) for values in zip(*assembled.values())]
        save_features(fset.path, features, meta)
        shutil.rmtree(fset.shard_dir, ignore_errors=True)
        log(f"[features] {fset.name}: {len(features)} samples -> {fset.path}")
    return {"computed": computed, "shards": len(units)}


def expert_vocabulary(names: Sequence[str], sources: Sequence[str | dict], tokenizer: str | dict):
    """(world tokenizer, SharedVocabulary) of `ExpertPool.load` without loading any weights: the
    experts are built on the meta device from their configs (output rows, eos ids)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from fusionroute.experts import _has_tokenizer
    from fusionroute.models import ModelSource, load_tokenizer
    from fusionroute.vocab import shared_vocabulary

    if len(names) != len(sources):
        raise ValueError(f"{len(names)} expert names for {len(sources)} expert sources")
    reference = load_tokenizer(tokenizer)
    skeletons = {}
    for name, source in zip(names, sources):
        path, extra = ModelSource.parse(source).resolve()
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, **extra))
        try:
            skeleton.generation_config = GenerationConfig.from_pretrained(path, **extra)
        except Exception:
            pass  # no generation_config.json: the config's eos ids stand
        skeletons[name] = skeleton
    tokenizers = {n: load_tokenizer(s) if _has_tokenizer(s) else None for n, s in zip(names, sources)}
    return reference, shared_vocabulary(reference, tokenizers, skeletons)


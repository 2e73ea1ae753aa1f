"""The one optimisation loop every trainer in the project uses.

Pretraining the tiny base, the experts, the router (SFT and mix training), the fine-tuned
baseline (SFT and DPO) and the reward model all differ only in the loss they compute per step;
the loop owns the optimiser, schedule, micro-batching, data-parallel sharding, clipping, seeding,
progress bar, logging and checkpoint/resume, so none of that is written twice.

Precision. In a bfloat16 (or float16) world the trainable parameters are upcast to fp32 for the
run (the optimiser's master weights: AdamW's lr-1e-5 updates are far below bf16's resolution of
a weight, 2^-8 of it, and would mostly round away) and every loss is computed under
`torch.autocast(<device>, dtype=bfloat16)`, so the matrix products still run in bf16. Frozen
parameters (a LoRA run's base weights) stay as they are (PEFT already keeps adapters in fp32).
After the last step the trained parameters go back to the world's dtype, so saved models keep it
(under FSDP the gathered state dict is cast on save). Resumable checkpoints hold the fp32
masters. `OptimConfig.master_weights: false` trains the half-precision weights directly (the
behaviour before; kept to measure the difference). A float32 world is untouched: no upcast, no
autocast. A float16 world takes the same path without loss scaling (the configured worlds use
bf16).

Token budget. `OptimConfig.max_tokens_per_micro_batch` bounds the padded tokens (rows x longest
row) of one forward. A trainer that tells the loop each sample's row lengths (`rows`) then gets
each micro-batch together with its split into pieces within the budget, and returns one loss per
piece, each that piece's share of the micro-batch's loss (normalised by the counts of the whole
micro-batch), so the update equals the unbudgeted one up to float rounding (tested). Under
`accelerate launch` every process cuts its micro-batch into the same number of pieces (the
largest any process needs, known to all without communication), as DDP/FSDP require.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from fusionroute import scaling
from fusionroute.io import progress, write_json


@dataclass
class OptimConfig:
    steps: int  # optimiser updates
    batch_size: int  # samples per update
    lr: float  # peak learning rate (AdamW)
    micro_batch_size: int = 0  # samples per forward/backward (gradient accumulation); 0 = batch_size
    warmup_ratio: float = 0.05  # linear warm-up share of the steps, then cosine decay to 10%
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    seed: int = 0
    checkpoint_every: int = 0  # steps between resumable checkpoints; 0 = none (short jobs)
    max_tokens_per_micro_batch: int = 0  # padded tokens per forward (rows x longest row); 0 = no budget
    master_weights: bool = True  # bf16/fp16 worlds: fp32 master weights + autocast (False: train the half weights)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.micro_batch_size <= 0 or self.micro_batch_size > self.batch_size:
            self.micro_batch_size = self.batch_size
        if self.max_tokens_per_micro_batch < 0:
            raise ValueError(f"max_tokens_per_micro_batch must be >= 0, got {self.max_tokens_per_micro_batch}")

    @classmethod
    def from_dict(cls, values: dict) -> "OptimConfig":
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    warmup = max(1, int(cfg.warmup_ratio * cfg.steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


MicroLoss = Callable[..., "torch.Tensor | Iterable[torch.Tensor]"]
"""Given a micro-batch (indices into the trainer's samples) and the live modules (wrapped for
distributed training under `accelerate launch`, else the modules themselves), the mean loss per
sample of that micro-batch: one tensor, or several (each back-propagated as it comes, which
bounds memory). Every process must run the same number of forwards per micro-batch.

With a token budget (and `rows`), it is called as `micro_loss(micro, live, pieces)`: `pieces`
splits `micro` into lists of indices within the budget, and it must yield one loss per piece, in
that order, one forward each, the losses adding up to the micro-batch's mean loss."""

Rows = Callable[[int], Sequence[int]]
"""The lengths of the rows a sample puts into a padded batch (an SFT sample: one; a preference
pair: chosen and rejected)."""


@dataclass
class TrainResult:
    log: list[dict]  # one entry per optimiser step: loss, lr, grad_norm
    modules: dict[str, nn.Module]  # the live modules: save these (scaling.save_trained gathers shards)
    master_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # fp32 masters, if asked to keep them


def token_pieces(micro: Sequence[int], rows: Rows, budget: int) -> list[list[int]]:
    """`micro` cut into pieces whose padded size (rows x longest row) stays within `budget`,
    samples taken shortest first (a sample over the budget on its own goes alone)."""
    order = sorted(micro, key=lambda i: max(rows(i)))
    pieces: list[list[int]] = []
    current: list[int] = []
    n_rows = longest = 0
    for i in order:
        r = rows(i)
        if current and (n_rows + len(r)) * max(longest, max(r)) > budget:
            pieces.append(current)
            current, n_rows, longest = [], 0, 0
        current.append(i)
        n_rows += len(r)
        longest = max(longest, max(r))
    if current:
        pieces.append(current)
    return pieces


def _padded(piece: Sequence[int], rows: Rows) -> int:
    return sum(len(rows(i)) for i in piece) * max(max(rows(i)) for i in piece)


def split_into(pieces: list[list[int]], count: int, rows: Rows) -> list[list[int]]:
    """Split the largest multi-sample pieces in halves until there are `count` (never more than
    the samples; splitting a piece never makes a part exceed the budget the piece kept)."""
    pieces = [list(p) for p in pieces]
    while len(pieces) < count:
        splittable = [k for k, p in enumerate(pieces) if len(p) > 1]
        if not splittable:
            break
        k = max(splittable, key=lambda j: (_padded(pieces[j], rows), -j))
        half = len(pieces[k]) // 2
        pieces[k : k + 1] = [pieces[k][:half], pieces[k][half:]]
    return pieces


class _Precision:
    """fp32 master weights + autocast for a bf16/fp16 world; nothing at all in a float32 world."""

    def __init__(self, modules: dict[str, nn.Module], enabled: bool):
        self.dtype: torch.dtype | None = None
        self.upcast: list[tuple[str, nn.Parameter, torch.dtype]] = []
        half = {p.dtype for m in modules.values() for p in m.parameters() if p.dtype in (torch.bfloat16, torch.float16)}
        if not enabled or not half:
            return
        self.dtype = torch.bfloat16 if torch.bfloat16 in half else torch.float16
        seen: set[int] = set()
        for name, module in modules.items():
            for pname, p in module.named_parameters():
                if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16) and id(p) not in seen:
                    seen.add(id(p))
                    self.upcast.append((f"{name}.{pname}", p, p.dtype))
                    p.data = p.data.float()
            module._fusionroute_save_dtype = self.dtype  # scaling.save_trained casts gathered shards to it
        self.device_type = "cpu"

    def bind(self, live: dict[str, nn.Module]) -> None:
        """Autocast where the prepared modules compute (FSDP moves a CPU-loaded model to the GPU)."""
        first = next(p for m in live.values() for p in m.parameters())
        self.device_type = first.device.type

    def describe(self, modules: dict[str, nn.Module]) -> str:
        upcast = sum(p.numel() for _, p, _ in self.upcast)
        trained = sum(p.numel() for p in _trainable(modules))
        name = str(self.dtype).replace("torch.", "")
        return (f"[training] {name} world: fp32 master weights for the {trained:,} trainable parameters "
                f"({upcast:,} upcast from {name}, the rest already fp32), {name} autocast compute; "
                f"saved weights are {name}")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def restore(self, sharded: bool, keep: bool) -> dict[str, torch.Tensor]:
        """Trained parameters back to the world dtype (in place; under FSDP the shards stay fp32
        and save_trained casts the gathered weights). Returns the fp32 masters if `keep`."""
        masters = {name: p.data for name, p, _ in self.upcast} if keep else {}
        if not sharded:
            for _, p, dtype in self.upcast:
                p.data = p.data.to(dtype)
        return masters


def _losses(micro_loss: MicroLoss, args: tuple, precision: _Precision) -> Iterable[torch.Tensor]:
    """The micro-batch's loss(es), each forward under the precision's autocast, each backward
    (done by the caller between two of them) outside it."""
    with precision.autocast():
        out = micro_loss(*args)
    if isinstance(out, torch.Tensor):
        yield out
        return
    iterator = iter(out)
    while True:
        with precision.autocast():
            try:
                loss = next(iterator)
            except StopIteration:
                return
        yield loss


class StepMetrics:
    """What a trainer's loss functions report about one optimiser step, beside the loss: each
    entry a ratio of sums (numerator, denominator), so pieces and micro-batches of any size add up
    exactly (e.g. the LM loss is summed token NLL over trained tokens). `train_loop` reads and
    resets it after every step and writes the ratios into the step's log row.

    The names are declared up front: under several processes every one of them is summed across
    processes in the same order every step, whether or not this process's share of the batch
    produced it (one rank may hold only SFT samples, another only pairs)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(sorted(set(names)))
        self._sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in self.names}

    def add(self, name: str, numerator: float, denominator: float) -> None:
        if name not in self._sums:
            raise KeyError(f"metric {name!r} was not declared; declared: {self.names}")
        pair = self._sums[name]
        pair[0] += float(numerator)
        pair[1] += float(denominator)

    def take(self) -> dict[str, float]:
        """The step's ratios (summed over processes), then start afresh. A metric whose
        denominator is 0 this step (e.g. no preference pair in the batch) is left out."""
        out = {}
        for name in self.names:
            num, den = (scaling.sum_across_processes(v) for v in self._sums[name])
            if den:
                out[name] = num / den
        self._sums = {name: [0.0, 0.0] for name in self.names}
        return out


def train_loop(
    modules: dict[str, nn.Module],
    schedule: Sequence[list[int]],
    micro_loss: MicroLoss,
    cfg: OptimConfig,
    desc: str,
    checkpoint_dir: Path | None = None,
    rows: Rows | None = None,
    keep_master_weights: bool = False,
    metrics: StepMetrics | None = None,
) -> TrainResult:
    """Run `cfg.steps` AdamW updates of the trainable parameters of `modules`.

    Step `s` trains on the samples `schedule[s]` (a global batch of `cfg.batch_size` indices),
    split into micro-batches of `cfg.micro_batch_size` for gradient accumulation. Under
    `accelerate launch` each process takes a contiguous equal share of the batch, so N processes
    with micro-batch m compute the same update as one process with micro-batch m (tested).

    With `checkpoint_dir` and `cfg.checkpoint_every`, modules, optimiser, schedule position and
    RNG are saved there periodically and picked up again after a crash: since each step's batch
    is a pure function of (seed, step), a resumed run sees the same data (tested).

    `rows` (each sample's row lengths) enables `cfg.max_tokens_per_micro_batch`; see the module
    docstring for that and for the precision handling. `keep_master_weights`: return the fp32
    master weights of a bf16 run in the result (measurements; they cost memory). `metrics`: the
    StepMetrics the loss functions write to; each step's ratios join its log row.
    """
    if len(schedule) < cfg.steps:
        raise ValueError(f"{desc}: the schedule has {len(schedule)} batches for {cfg.steps} steps")
    budget = cfg.max_tokens_per_micro_batch
    if budget and rows is None:
        raise ValueError(f"{desc}: max_tokens_per_micro_batch is not supported by this trainer (it gives no "
                         "sample lengths); set it to 0")
    torch.manual_seed(cfg.seed)
    precision = _Precision(modules, cfg.master_weights)
    if precision.dtype is not None and scaling.is_main_process():
        print(precision.describe(modules), flush=True)
    live = scaling.prepare_modules(modules)
    precision.bind(live)
    params = _trainable(live)
    optimizer = scaling.prepare_optimizer(
        torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    checkpoint = _Checkpoint(checkpoint_dir, live, optimizer, scheduler) if checkpoint_dir else None
    start, log = checkpoint.restore() if checkpoint else (0, [])
    if start and scaling.is_main_process():
        print(f"[resume] {desc}: {start} of {cfg.steps} step(s) restored from {checkpoint_dir}", flush=True)
    world = scaling.num_processes()

    quiet = {} if scaling.is_main_process() else {"disable": True}  # one bar per job, not per process
    bar = progress(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps, **quiet)
    began = time.perf_counter()
    forwards = 0
    warned = False
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        batch = list(schedule[step])
        local = scaling.shard(batch)
        plan = None
        if budget:
            plan, too_long = _plan_pieces(batch, cfg.micro_batch_size, rows, budget)
            if too_long and not warned and scaling.is_main_process():
                print(f"[training] {desc}: {too_long} sample(s) exceed max_tokens_per_micro_batch={budget} "
                      "padded tokens on their own and run alone", flush=True)
                warned = True
        for k, start_at in enumerate(range(0, len(local), cfg.micro_batch_size)):
            micro = local[start_at : start_at + cfg.micro_batch_size]
            weight = len(micro) * world / cfg.batch_size  # distributed backends average over processes
            args = (micro, live) if plan is None else (micro, live, plan[k])
            for loss in _losses(micro_loss, args, precision):
                forwards += 1
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at step {step}")
                scaling.backward(loss * weight)
                total += float(loss.detach()) * weight / world
        total = scaling.sum_across_processes(total)
        grad_norm = scaling.clip_grad_norm(params, cfg.grad_clip) if cfg.grad_clip else float("nan")
        optimizer.step()
        scheduler.step()
        log.append({"step": step, "loss": total, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                    **(metrics.take() if metrics is not None else {})})
        bar.set_postfix(loss=f"{total:.4f}")
        done = step + 1
        if checkpoint and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            checkpoint.save(done, log)
    if checkpoint:
        checkpoint.clear()
    if log:
        log[-1]["seconds"] = time.perf_counter() - began
        log[-1]["forwards"] = forwards  # forwards this process ran (since a resume, if any)
    masters = precision.restore(scaling.sharded(), keep_master_weights)
    return TrainResult(log, live, masters)


def _plan_pieces(batch: list[int], micro_batch_size: int, rows: Rows, budget: int) -> tuple[list[list[list[int]]], int]:
    """This process's pieces for each of its micro-batches of `batch`: every process cuts its
    k-th micro-batch into as many pieces as the process that needs the most (each process can
    work out every share, so no communication is needed). Also: how many samples exceed the
    budget alone."""
    shares = scaling.all_shards(batch)
    mine = scaling.process_index()
    plan: list[list[list[int]]] = []
    too_long = sum(1 for i in batch if len(rows(i)) * max(rows(i)) > budget)
    for start_at in range(0, len(shares[mine]), micro_batch_size):
        cuts = [token_pieces(share[start_at : start_at + micro_batch_size], rows, budget) for share in shares]
        count = max(len(c) for c in cuts)
        plan.append(split_into(cuts[mine], count, rows))
    return plan, too_long


def _trainable(modules: dict[str, nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    params = []
    for module in modules.values():
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    return params


def keyed_checkpoint(directory: Path, key: dict) -> Path:
    """`directory` for a training job's resumable state, kept only when the state was made by the
    same inputs, settings and code: `key` (the step's input fingerprints and params) plus the hash
    of the package code imported so far. Otherwise the old state is removed and the job says it
    starts over (a checkpoint of another learning-rate schedule must not be resumed)."""
    from fusionroute.io import read_json, settings_hash
    from fusionroute.provenance import code_version

    digest = settings_hash({**key, "code": code_version()["code_hash"]})
    key_file = directory / "key.json"
    if scaling.is_main_process():
        old = read_json(key_file).get("key") if key_file.exists() else None
        if directory.exists() and old != digest:
            print(f"[resume] {directory}: made by other inputs, settings or code ({old} != {digest}): "
                  "starting over", flush=True)
            shutil.rmtree(directory)
        elif directory.exists():
            print(f"[resume] {directory}: same inputs, settings and code: resuming", flush=True)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(key_file, {"key": digest})
    scaling.wait_for_everyone()   # no process restores before the main one has kept or cleared the state
    return directory


class _Checkpoint:
    """Resumable training state in `directory`: single process, one torch file written
    atomically; under `accelerate launch`, accelerate's own (sharding-aware) save_state."""

    def __init__(self, directory: Path, modules: dict[str, nn.Module], optimizer, scheduler):
        self.directory, self.modules, self.optimizer, self.scheduler = Path(directory), modules, optimizer, scheduler
        self.file = self.directory / "trainer_state.pt"
        self.progress_file = self.directory / "progress.json"
        scaling.register_for_checkpointing(scheduler)

    def restore(self) -> tuple[int, list[dict]]:
        if scaling.accelerator() is not None:
            if not self.progress_file.exists():
                return 0, []
            scaling.accelerator().load_state(str(self.directory / "accelerate"))
            saved = json.loads(self.progress_file.read_text())
            return saved["step"], saved["log"]
        if not self.file.exists():
            return 0, []
        state = torch.load(self.file, weights_only=False)
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        return state["step"], state["log"]

    def save(self, step: int, log: list[dict]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if scaling.accelerator() is not None:
            scaling.accelerator().save_state(str(self.directory / "accelerate"))
            if scaling.is_main_process():
                write_json(self.progress_file, {"step": step, "log": log})
            return
        tmp = self.file.with_suffix(".tmp")
        torch.save({"modules": {name: m.state_dict() for name, m in self.modules.items()},
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "step": step, "log": log, "rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, self.file)

    def clear(self) -> None:
        if scaling.is_main_process() and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)


SUMMARY_WINDOW = 10  # steps averaged for the "first"/"last" values of the summary


def summarise_log(log: list[dict]) -> dict:
    """First/last loss, and for every logged quantity (loss parts, rewards, margins, accuracy) its
    mean over the first and the last SUMMARY_WINDOW steps: whether each part of the objective moved."""
    summary: dict = {"steps": len(log), "first_loss": log[0]["loss"] if log else None,
                     "last_loss": log[-1]["loss"] if log else None}
    skip = {"step", "lr", "seconds", "forwards"}
    names = [k for k in dict.fromkeys(k for row in log for k in row) if k not in skip]
    for name in names:
        values = [(i, row[name]) for i, row in enumerate(log) if name in row and math.isfinite(row[name])]
        if not values:
            continue
        first = [v for i, v in values if i < SUMMARY_WINDOW]
        last = [v for i, v in values if i >= len(log) - SUMMARY_WINDOW]
        summary[name] = {"first": sum(first) / len(first) if first else None,
                         "last": sum(last) / len(last) if last else None}
    return summary


def write_log(path: str | os.PathLike, log: list[dict], extra: dict | None = None) -> None:
    """Persist a training log (one row per step) plus its summary next to the model."""
    write_json(path, {"summary": {**summarise_log(log), **(extra or {})}, "log": log})


def config_dict(obj) -> dict:
    return json.loads(json.dumps(asdict(obj)))

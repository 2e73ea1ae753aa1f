"""The one optimisation loop every trainer in the project uses.

Pretraining the tiny base, the experts, the router (SFT and mix training), the fine-tuned
baseline (SFT and DPO) and the reward model all differ only in the loss they compute per step;
the loop owns the optimiser, schedule, micro-batching, data-parallel sharding, clipping, seeding,
progress bar, logging and checkpoint/resume, so none of that is written twice.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.micro_batch_size <= 0 or self.micro_batch_size > self.batch_size:
            self.micro_batch_size = self.batch_size

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


MicroLoss = Callable[[list[int], dict[str, nn.Module]], "torch.Tensor | Iterable[torch.Tensor]"]
"""Given a micro-batch (indices into the trainer's samples) and the live modules (wrapped for
distributed training under `accelerate launch`, else the modules themselves), the mean loss per
sample of that micro-batch: one tensor, or several (each back-propagated as it comes, which
bounds memory). Every process must run the same number of forwards per micro-batch."""


@dataclass
class TrainResult:
    log: list[dict]  # one entry per optimiser step: loss, lr, grad_norm
    modules: dict[str, nn.Module]  # the live modules: save these (scaling.save_trained gathers shards)


def train_loop(
    modules: dict[str, nn.Module],
    schedule: Sequence[list[int]],
    micro_loss: MicroLoss,
    cfg: OptimConfig,
    desc: str,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Run `cfg.steps` AdamW updates of the trainable parameters of `modules`.

    Step `s` trains on the samples `schedule[s]` (a global batch of `cfg.batch_size` indices),
    split into micro-batches of `cfg.micro_batch_size` for gradient accumulation. Under
    `accelerate launch` each process takes a contiguous equal share of the batch, so N processes
    with micro-batch m compute the same update as one process with micro-batch m (tested).

    With `checkpoint_dir` and `cfg.checkpoint_every`, modules, optimiser, schedule position and
    RNG are saved there periodically and picked up again after a crash: since each step's batch
    is a pure function of (seed, step), a resumed run sees the same data (tested).
    """
    if len(schedule) < cfg.steps:
        raise ValueError(f"{desc}: the schedule has {len(schedule)} batches for {cfg.steps} steps")
    torch.manual_seed(cfg.seed)
    live = scaling.prepare_modules(modules)
    params = _trainable(live)
    optimizer = scaling.prepare_optimizer(
        torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    checkpoint = _Checkpoint(checkpoint_dir, live, optimizer, scheduler) if checkpoint_dir else None
    start, log = checkpoint.restore() if checkpoint else (0, [])
    world = scaling.num_processes()

    quiet = {} if scaling.is_main_process() else {"disable": True}  # one bar per job, not per process
    bar = progress(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps, **quiet)
    began = time.perf_counter()
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        local = scaling.shard(list(schedule[step]))
        for start_at in range(0, len(local), cfg.micro_batch_size):
            micro = local[start_at : start_at + cfg.micro_batch_size]
            weight = len(micro) * world / cfg.batch_size  # distributed backends average over processes
            losses = micro_loss(micro, live)
            for loss in [losses] if isinstance(losses, torch.Tensor) else losses:
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at step {step}")
                scaling.backward(loss * weight)
                total += float(loss.detach()) * weight / world
        total = scaling.sum_across_processes(total)
        grad_norm = scaling.clip_grad_norm(params, cfg.grad_clip) if cfg.grad_clip else float("nan")
        optimizer.step()
        scheduler.step()
        log.append({"step": step, "loss": total, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm})
        bar.set_postfix(loss=f"{total:.4f}")
        done = step + 1
        if checkpoint and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            checkpoint.save(done, log)
    if checkpoint:
        checkpoint.clear()
    if log:
        log[-1]["seconds"] = time.perf_counter() - began
    return TrainResult(log, live)


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


def write_log(path: str | os.PathLike, log: list[dict], extra: dict | None = None) -> None:
    """Persist a training log plus a summary (first/last loss) next to the model."""
    summary = {"steps": len(log), "first_loss": log[0]["loss"] if log else None,
               "last_loss": log[-1]["loss"] if log else None, **(extra or {})}
    write_json(path, {"summary": summary, "log": log})


def config_dict(obj) -> dict:
    return json.loads(json.dumps(asdict(obj)))

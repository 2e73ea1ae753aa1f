"""The one optimisation loop every trainer in the project uses.

Pretraining the tiny base, the experts, the router (SFT and mix training), the fine-tuned
baseline (SFT and DPO) and the reward model all differ only in the loss they compute per step;
the loop owns the optimiser, schedule, clipping, seeding, progress bar, logging and
checkpoint/resume, so none of that is written twice.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from fusionroute.io import progress


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


StepLoss = Callable[[int], Iterable[torch.Tensor]]
"""Given the step index, yield the micro-batch losses of that step (already scaled so that
their sum is the step's loss); the loop back-propagates each as it comes, which bounds memory."""


def train_loop(
    params: list[nn.Parameter],
    step_loss: StepLoss,
    cfg: OptimConfig,
    desc: str,
    checkpoint_dir: Path | None = None,
    modules: dict[str, nn.Module] | None = None,
) -> list[dict]:
    """Run `cfg.steps` AdamW updates of `params`; returns the per-step log.

    With `checkpoint_dir` and `cfg.checkpoint_every`, the state of `modules`, optimiser and
    step counter is saved there periodically and picked up again after a crash: since each
    step's batch is a pure function of (seed, step), a resumed run sees the same data.
    """
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    log: list[dict] = []
    start = 0
    state_file = checkpoint_dir / "trainer_state.pt" if checkpoint_dir else None
    if state_file is not None and state_file.exists():
        state = torch.load(state_file, weights_only=False)
        for name, module in (modules or {}).items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, log = state["step"], state["log"]
        torch.set_rng_state(state["rng"])

    bar = progress(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps)
    began = time.perf_counter()
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for loss in step_loss(step):
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at step {step}")
            loss.backward()
            total += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip else float("nan")
        optimizer.step()
        scheduler.step()
        log.append({"step": step, "loss": total, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm})
        bar.set_postfix(loss=f"{total:.4f}")
        done = step + 1
        if state_file is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _save_state(state_file, modules or {}, optimizer, scheduler, done, log)
    if state_file is not None:
        state_file.unlink(missing_ok=True)
    if log:
        log[-1]["seconds"] = time.perf_counter() - began
    return log


def _save_state(path: Path, modules: dict[str, nn.Module], optimizer, scheduler, step: int, log: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "log": log,
            "rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def write_log(path: str | os.PathLike, log: list[dict], extra: dict | None = None) -> None:
    """Persist a training log plus a summary (first/last loss) next to the model."""
    from fusionroute.io import write_json

    summary = {"steps": len(log), "first_loss": log[0]["loss"] if log else None,
               "last_loss": log[-1]["loss"] if log else None, **(extra or {})}
    write_json(path, {"summary": summary, "log": log})


def config_dict(obj) -> dict:
    return json.loads(json.dumps(asdict(obj)))

"""Options for training large routers (and the fine-tuned baseline): bf16, gradient checkpointing,
LoRA, and multi-GPU runs under `accelerate launch`.

Config (`training:` block, all optional; see config/paper.yaml):
    training:
      gradient_checkpointing: true     # (model.gradient_checkpointing_enable) recompute activations in backward: ~sqrt memory, ~30% slower
      lora: {r: 64, alpha: 128, dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj,
             gate_proj, up_proj, down_proj]}      # null = full fine-tuning (the paper)
      launcher: accelerate             # python (default) | accelerate
      accelerate_config: config/accelerate/fsdp.yaml   # or config/accelerate/deepspeed_zero3.yaml
      num_processes: 8                 # GPUs
bf16 is the world's `dtype: bfloat16` (weights and compute; AdamW keeps its states in that dtype).

Trainers call `prepare_for_training(model, options)` on the policy right after loading it, train
the parameters that still require grad (`trainable_parameters`), and call
`finalize_for_saving(model)` before `save_pretrained`.

LoRA and the router. Adapters go on the router's LM only (`router.lm` becomes a `PeftModel`); the
routing head is a separate module that is left fully trainable (its few thousand weights are
the part of the router that must be learned from scratch). On save the adapters are MERGED into
the LM weights (`merge_and_unload`), so a LoRA-trained router is the same single directory as a
fully trained one (HF LM + routing_head.safetensors + router_config.json) and decoding,
`RouterModel.from_pretrained` and the CDPO reference need no PEFT at all. The price is a full-size
checkpoint per router instead of a small adapter; we prefer one format everywhere.

Multi-GPU. With `launcher: accelerate`, `maybe_relaunch` (called by the workflow's step runner
before a training step) writes the step's inputs/outputs/params to a JSON job file and runs
    accelerate launch --config_file <accelerate_config> --num_processes <N> \\
        [--fsdp_transformer_layer_cls_to_wrap <decoder layer class>] \\
        -m fusionroute.scaling run-step <job.json>
in the job's allocation (on SLURM: give the training rules `gpu: N` in profiles/slurm). Each
process runs the same step. `fusionroute.training.train_loop` does the distributed part for every
trainer: `prepare_modules` wraps the trained modules (DDP, or FSDP / DeepSpeed ZeRO-3 sharding per
the config file) before the optimiser is built, `shard` gives each process an equal contiguous
slice of every global batch, `backward` / `clip_grad_norm` go through the Accelerator, and
`save_trained` gathers the full weights and writes them from the main process only. Outside
`accelerate launch` all of these are no-ops, so the single-process path is unchanged. Tested with
two real CPU processes (torchrun + gloo: the DDP path); FSDP and ZeRO-3 need GPUs to run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

LAUNCHED_ENV = "FUSIONROUTE_LAUNCHED"     # set in the processes started by `accelerate launch`
TRAINING_STEPS = ("router_sft", "mix_train", "finetune_lm", "reward_model")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ScalingOptions:
    gradient_checkpointing: bool = False
    lora: dict | None = None
    launcher: str = "python"
    accelerate_config: str | None = None
    num_processes: int = 1
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, options: dict | None) -> "ScalingOptions":
        options = dict(options or {})
        known = {k: options.pop(k) for k in list(options) if k in cls.__dataclass_fields__ and k != "extra"}
        if options:
            raise ValueError(f"unknown training options {sorted(options)}")
        out = cls(**known)
        if out.launcher not in ("python", "accelerate"):
            raise ValueError(f"training.launcher must be python or accelerate, got {out.launcher!r}")
        if out.lora is not None:
            unknown = set(out.lora) - {"r", "alpha", "dropout", "target_modules"}
            if unknown or "r" not in out.lora:
                raise ValueError(f"training.lora needs r (and optionally alpha, dropout, target_modules); got {out.lora}")
        return out


# ----------------------------------------------------------------------------------------------
# Single model: checkpointing, LoRA, saving
# ----------------------------------------------------------------------------------------------


def _is_router(model: nn.Module) -> bool:
    return hasattr(model, "routing_head") and hasattr(model, "lm")


def _lora_config(spec: dict):
    from peft import LoraConfig, TaskType

    r = int(spec["r"])
    return LoraConfig(r=r, lora_alpha=float(spec.get("alpha", 2 * r)), lora_dropout=float(spec.get("dropout", 0.0)),
                      target_modules=list(spec.get("target_modules") or DEFAULT_LORA_TARGETS),
                      bias="none", task_type=TaskType.CAUSAL_LM)


def _prepare_lm(lm, options: ScalingOptions):
    if options.gradient_checkpointing:
        # Non-reentrant checkpointing: gradients reach LoRA weights even though the (frozen)
        # embeddings' outputs do not require grad.
        # (transformers 5 names it activation checkpointing; gradient_checkpointing_enable is the
        # older alias, kept for older versions.)
        kwargs = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        lm.config.use_cache = False
    if options.lora is not None:
        from peft import get_peft_model

        lm = get_peft_model(lm, _lora_config(options.lora))
    return lm


def prepare_for_training(model: nn.Module, options: dict | ScalingOptions | None) -> nn.Module:
    """Apply the `training` options to a causal LM or a RouterModel; returns the model to train
    (a PeftModel for a plain LM with LoRA; the same RouterModel, whose `.lm` was wrapped, for a
    router). The routing head always stays fully trainable."""
    opts = options if isinstance(options, ScalingOptions) else ScalingOptions.from_dict(options)
    if _is_router(model):
        model.lm = _prepare_lm(model.lm, opts)
        for p in model.routing_head.parameters():
            p.requires_grad_(True)
    else:
        model = _prepare_lm(model, opts)
    print(describe_training(model, opts), flush=True)
    return model


def describe_training(model: nn.Module, options: ScalingOptions) -> str:
    """One line for the step's log: what is trained, and how much of the model that is."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    how = f"LoRA r={options.lora['r']} adapters" if options.lora is not None else "full fine-tuning"
    extra = ", gradient checkpointing" if options.gradient_checkpointing else ""
    return f"[training] {how}{extra}: {trained:,} of {total:,} parameters trainable ({100 * trained / total:.2f}%)"


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the optimiser should update (LoRA: the adapters, plus the routing head for a router)."""
    return [p for p in model.parameters() if p.requires_grad]


def _unwrap_lm(lm):
    from peft import PeftModel

    if isinstance(lm, PeftModel):
        lm = lm.merge_and_unload()
    if hasattr(lm, "is_activation_checkpointing"):
        if lm.is_activation_checkpointing:
            lm.activation_checkpointing_disable()
    elif getattr(lm, "is_gradient_checkpointing", False):
        lm.gradient_checkpointing_disable()
    if hasattr(lm, "config"):
        lm.config.use_cache = True
    return lm


def finalize_for_saving(model: nn.Module) -> nn.Module:
    """Merge LoRA adapters into the weights and undo training-only settings, so
    `save_pretrained` writes an ordinary HF model (or router) directory. Returns the model to save."""
    if _is_router(model):
        model.lm = _unwrap_lm(model.lm)
        return model
    return _unwrap_lm(model)


# ----------------------------------------------------------------------------------------------
# Multi-GPU: accelerate
# ----------------------------------------------------------------------------------------------

_ACCELERATOR = None


def launched() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"


def accelerator():
    """The process's `accelerate.Accelerator` under `accelerate launch`, else None.

    find_unused_parameters: in mix training a micro-batch of preference pairs only leaves the
    routing head out of the loss, and DDP must know that such a parameter may get no gradient."""
    global _ACCELERATOR
    if not launched():
        return None
    if _ACCELERATOR is None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        _ACCELERATOR = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    return _ACCELERATOR


def is_main_process() -> bool:
    acc = accelerator()
    return acc is None or acc.is_main_process


def num_processes() -> int:
    acc = accelerator()
    return 1 if acc is None else acc.num_processes


def _sharded() -> bool:
    """True when parameters are split across processes (FSDP, DeepSpeed), not replicated (DDP)."""
    acc = accelerator()
    return acc is not None and acc.distributed_type.name in ("FSDP", "DEEPSPEED")


def prepare_modules(modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The trained modules wrapped for the launch (DDP / FSDP / ZeRO-3), or as given. Prepared
    before the optimiser exists, as FSDP requires; the wrapped module is what a loss must call."""
    acc = accelerator()
    if acc is None:
        return dict(modules)
    if _sharded() and any(_has_lora(m) for m in modules.values()):
        raise ValueError("LoRA is the single-GPU option; with FSDP or DeepSpeed ZeRO-3 train the full weights "
                         "(set training.lora: null) or use a DDP accelerate config")
    return {name: acc.prepare(module) for name, module in modules.items()}


def prepare_optimizer(optimizer):
    acc = accelerator()
    return optimizer if acc is None else acc.prepare(optimizer)


def register_for_checkpointing(*objects) -> None:
    """Objects (the LR scheduler) that accelerate's save_state must include. The scheduler is
    deliberately not `prepare`d: accelerate would step it once per process per update."""
    acc = accelerator()
    if acc is not None:
        acc.register_for_checkpointing(*objects)


def shard(indices: list[int]) -> list[int]:
    """This process's contiguous share of a global batch. Equal shares keep every process on
    the same number of forwards, which DDP/FSDP collectives require."""
    acc = accelerator()
    if acc is None or acc.num_processes == 1:
        return indices
    n = acc.num_processes
    if len(indices) % n:
        raise ValueError(f"a batch of {len(indices)} samples does not split evenly over {n} processes; "
                         f"make the batch size a multiple of {n}")
    size = len(indices) // n
    return indices[acc.process_index * size : (acc.process_index + 1) * size]


def backward(loss) -> None:
    acc = accelerator()
    if acc is None:
        loss.backward()
    else:
        acc.backward(loss)


def sum_across_processes(value: float) -> float:
    acc = accelerator()
    if acc is None or acc.num_processes == 1:
        return value
    import torch

    return float(acc.reduce(torch.tensor([value], device=acc.device), reduction="sum").item())


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (across shards under FSDP/ZeRO-3); returns the norm before clipping."""
    import torch

    acc = accelerator()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if acc is None else acc.clip_grad_norm_(params, max_norm)
    return float(norm) if norm is not None else float("nan")  # DeepSpeed clips inside its engine


def _has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def save_trained(model: nn.Module, out_dir: str | Path, tokenizer=None) -> None:
    """Save a trained causal LM or RouterModel (the live module from `train_loop`) as an ordinary
    HF / router directory: LoRA merged, training-only settings undone. Under `accelerate launch`
    every process must call it: sharded weights are gathered, and only the main process writes."""
    acc = accelerator()
    if acc is None:
        finalize_for_saving(model).save_pretrained(out_dir)
    else:
        acc.wait_for_everyone()
        state = acc.get_state_dict(model) if _sharded() else None  # collective: every process joins
        unwrapped = acc.unwrap_model(model)
        if acc.is_main_process:
            if state is None:
                finalize_for_saving(unwrapped).save_pretrained(out_dir)
            else:
                unwrapped.save_pretrained(out_dir, state_dict=state)
    if tokenizer is not None and is_main_process():
        tokenizer.save_pretrained(out_dir)
    if acc is not None:
        acc.wait_for_everyone()


def _decoder_layer_class(model_source: Any) -> str | None:
    """The decoder-layer class FSDP wraps, from the model's config (e.g. LlamaDecoderLayer)."""
    try:
        import transformers
        from transformers import AutoConfig

        from fusionroute.models import ModelSource

        name, kwargs = ModelSource.parse(model_source).resolve()
        config = AutoConfig.from_pretrained(name, **kwargs)
        cls = getattr(transformers, (config.architectures or [""])[0], None)
        layers = getattr(cls, "_no_split_modules", None) or []
        return layers[0] if layers else None
    except Exception:  # noqa: BLE001 - best effort; the config file's default stays
        return None


def accelerate_command(job_file: str, options: ScalingOptions, model_source: Any = None) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if options.accelerate_config:
        cmd += ["--config_file", options.accelerate_config]
    cmd += ["--num_processes", str(options.num_processes)]
    config_text = Path(options.accelerate_config).read_text() if options.accelerate_config else ""
    if "FSDP" in config_text and model_source is not None:
        layer = _decoder_layer_class(model_source)
        if layer:
            cmd += ["--fsdp_transformer_layer_cls_to_wrap", layer]
    return cmd + ["-m", "fusionroute.scaling", "run-step", job_file]


def maybe_relaunch(name: str, inputs: dict, outputs: dict, params: dict, threads: int) -> bool:
    """Run a training step under `accelerate launch` when the config asks for it; True if it ran.
    Call at the top of the step runner: `if maybe_relaunch(...): return`."""
    options = ScalingOptions.from_dict(params.get("scaling"))
    if options.launcher != "accelerate" or launched() or name not in TRAINING_STEPS:
        return False
    fd, job_file = tempfile.mkstemp(prefix=f"{name}.", suffix=".job.json")
    with os.fdopen(fd, "w") as handle:
        json.dump({"name": name, "inputs": inputs, "outputs": outputs, "params": params, "threads": threads}, handle)
    try:
        model_source = (params.get("models") or {}).get("init")
        env = {**os.environ, LAUNCHED_ENV: "1"}
        subprocess.run(accelerate_command(job_file, options, model_source), check=True, env=env)
    finally:
        os.unlink(job_file)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a workflow step from a job file (used by accelerate launch).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run-step")
    run.add_argument("job", help="JSON {name, inputs, outputs, params, threads}")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    from fusionroute.pipeline import run_step

    run_step(job["name"], job["inputs"], job["outputs"], job["params"], job.get("threads", 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

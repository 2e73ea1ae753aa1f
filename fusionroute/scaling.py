"""Options for training large routers (and the fine-tuned baseline): bf16 with fp32 master weights,
gradient checkpointing, LoRA, token-budgeted micro-batches, and multi-GPU runs (FSDP) under
`accelerate launch`.

Config (`training:` block, all optional; see config/paper.yaml):
    training:
      gradient_checkpointing: true     # (model.gradient_checkpointing_enable) recompute activations in backward: ~sqrt memory, ~30% slower
      lora: {r: 64, alpha: 128, dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj,
             gate_proj, up_proj, down_proj]}      # null = full fine-tuning (the paper); absent = by size, below
      lora_above_params: 3.0e9         # `lora` absent: a model with more parameters trains LoRA (AUTO_LORA)
                                       # unless FSDP shards it; null = never by size
      launcher: accelerate             # python (default) | accelerate
      accelerate_config: config/accelerate/fsdp.yaml
      num_processes: 8                 # GPUs
bf16 is the world's `dtype: bfloat16`: weights are loaded and saved in bf16, the trainable ones are
upcast to fp32 master weights for the run and the forward runs under bf16 autocast
(fusionroute/training.py; AdamW's states are fp32). Budgets: `max_tokens_per_micro_batch` in the
optim blocks (fusionroute/training.py), and the chunked log-probs of fusionroute/losses.py.

Memory of one GPU, per parameter trained: fp32 weight 4 + fp32 gradient 4 + AdamW 8 = 16 bytes
(an 8B router: 128 GB, more than one 80 GB GPU, hence LoRA above `lora_above_params`, or FSDP).

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

Multi-GPU (FSDP; DeepSpeed is not supported). With `launcher: accelerate`, `maybe_relaunch`
(called by the workflow's step runner before a training step) writes the step's
inputs/outputs/params to a JSON job file and runs
    accelerate launch --config_file <accelerate_config> --num_processes <N> \\
        [--fsdp_transformer_layer_cls_to_wrap <decoder layer class>] \\
        -m fusionroute.steps run-step <job.json>
in the job's allocation (on SLURM: give the training rules `gpu: N` in profiles/slurm). Each
process runs the same step and places everything on its own device (`process_device`:
cuda:LOCAL_RANK, never plain "cuda"): under FSDP the policy is loaded on the CPU and FSDP moves
each process's shard to its GPU (`load_device`); the CDPO/DPO reference pass is split over the
processes (fusionroute.trainers.stored_reference). `fusionroute.training.train_loop` does the
distributed part for every trainer: `prepare_modules` wraps the trained modules (DDP, or FSDP
sharding per the config file; FSDP keeps the fp32 master shards and all-gathers bf16 weights,
`fsdp_mixed_precision`) before the optimiser is built, `shard` gives each process an equal
contiguous slice of every global batch, `backward` / `clip_grad_norm` go through the Accelerator,
and `save_trained` gathers the full weights, casts them to the world dtype and writes them from
the main process only. Outside `accelerate launch` all of these are no-ops, so the
single-process path is unchanged. Tested with two real CPU processes (torchrun + gloo: the DDP
path); FSDP needs GPUs to run.
"""
from __future__ import annotations

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
DTYPE_ENV = "FUSIONROUTE_WORLD_DTYPE"     # the world dtype, for FSDP's mixed-precision policy
TRAINING_STEPS = ("router_sft", "mix_train", "finetune_lm", "reward_model")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
AUTO = "auto"                             # `lora` not given: decided by `lora_above_params`
AUTO_LORA = {"r": 64, "alpha": 128}       # the adapters a model over `lora_above_params` gets
DEFAULT_LORA_ABOVE_PARAMS = 3.0e9


@dataclass
class ScalingOptions:
    gradient_checkpointing: bool = False
    lora: dict | None | str = AUTO
    lora_above_params: float | None = DEFAULT_LORA_ABOVE_PARAMS
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
        if isinstance(out.lora, str):
            if out.lora != AUTO:
                raise ValueError(f"training.lora must be null, {AUTO!r} or {{r: ...}}; got {out.lora!r}")
        elif out.lora is not None:
            unknown = set(out.lora) - {"r", "alpha", "dropout", "target_modules"}
            if unknown or "r" not in out.lora:
                raise ValueError(f"training.lora needs r (and optionally alpha, dropout, target_modules); got {out.lora}")
        if out.lora_above_params is not None and not out.lora_above_params > 0:
            raise ValueError(f"training.lora_above_params must be positive or null, got {out.lora_above_params}")
        if out.accelerate_config and Path(out.accelerate_config).exists():
            kind = _distributed_type(Path(out.accelerate_config).read_text())
            if kind == "DEEPSPEED":
                raise ValueError(f"{out.accelerate_config}: DeepSpeed is not supported; shard with FSDP "
                                 "(config/accelerate/fsdp.yaml)")
        return out

    def resolve_lora(self, n_params: int, sharded: bool) -> tuple[dict | None, str]:
        """(the LoRA spec to apply or None, why): `lora` as given, or by size when absent."""
        if self.lora != AUTO:
            return self.lora, "training.lora set" if self.lora is not None else "training.lora: null set"
        if self.lora_above_params is None:
            return None, "training.lora not set, lora_above_params: null"
        if sharded:
            return None, f"FSDP shards the {n_params:.2e} parameters over the processes"
        if n_params > self.lora_above_params:
            return dict(AUTO_LORA), (f"automatic: {n_params:.2e} parameters > lora_above_params "
                                     f"{self.lora_above_params:.2e} on one device; set training.lora: null to fine-tune fully")
        return None, f"{n_params:.2e} parameters <= lora_above_params {self.lora_above_params:.2e}"


def _distributed_type(config_text: str) -> str:
    import yaml

    try:
        return str((yaml.safe_load(config_text) or {}).get("distributed_type", "NO")).upper()
    except yaml.YAMLError:
        return "NO"


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
    router). The routing head always stays fully trainable. Without `lora` in the options, a
    model over `lora_above_params` parameters trains LoRA adapters (AUTO_LORA) unless FSDP shards
    it; the log line says which and why."""
    opts = options if isinstance(options, ScalingOptions) else ScalingOptions.from_dict(options)
    n_params = sum(p.numel() for p in model.parameters())
    lora, why = opts.resolve_lora(n_params, sharded())
    resolved = ScalingOptions(gradient_checkpointing=opts.gradient_checkpointing, lora=lora,
                              lora_above_params=opts.lora_above_params, launcher=opts.launcher,
                              accelerate_config=opts.accelerate_config, num_processes=opts.num_processes)
    if _is_router(model):
        model.lm = _prepare_lm(model.lm, resolved)
        for p in model.routing_head.parameters():
            p.requires_grad_(True)
    else:
        model = _prepare_lm(model, resolved)
    if is_main_process():
        print(describe_training(model, resolved, why), flush=True)
    return model


def describe_training(model: nn.Module, options: ScalingOptions, why: str = "") -> str:
    """One line for the step's log: what is trained, how much of the model that is, and why."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    how = f"LoRA r={options.lora['r']} adapters" if isinstance(options.lora, dict) else "full fine-tuning"
    extra = ", gradient checkpointing" if options.gradient_checkpointing else ""
    reason = f" [{why}]" if why else ""
    return (f"[training] {how}{extra}: {trained:,} of {total:,} parameters trainable "
            f"({100 * trained / total:.2f}%){reason}")


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
    routing head out of the loss, and DDP must know that such a parameter may get no gradient.

    Precision is ours, not accelerate's: the accelerate configs say `mixed_precision: 'no'`
    (accelerate's bf16 mode would also convert every output to fp32: a full fp32 copy of the
    [batch, length, vocab] logits), train_loop autocasts, and under FSDP with a bf16 world the
    plugin gets `fsdp_mixed_precision()` (bf16 all-gathered weights, fp32 gradient reduction,
    fp32 master shards)."""
    global _ACCELERATOR
    if not launched():
        return None
    if _ACCELERATOR is None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        kwargs: dict[str, Any] = {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)]}
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
            if os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() in ("1", "true"):
                raise ValueError("fsdp_cpu_ram_efficient_loading must be false: every process loads the full "
                                 "weights (the reference pass needs them); FSDP then moves each shard to its GPU")
            from accelerate.utils import FullyShardedDataParallelPlugin

            policy = fsdp_mixed_precision(os.environ.get(DTYPE_ENV, "float32"))
            kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(mixed_precision_policy=policy)
        _ACCELERATOR = Accelerator(**kwargs)
    return _ACCELERATOR


def fsdp_mixed_precision(dtype: str, fsdp_version: int | None = None) -> dict | None:
    """FSDP's mixed-precision policy for a world dtype: bf16/fp16 weights gathered for compute,
    gradients reduced in fp32 onto the fp32 master shards; None (all fp32) for a float32 world.
    FSDP2 also names the dtype of the forward's outputs: the half type (fp32 logits would be a
    full [batch, length, vocab] fp32 copy)."""
    import torch

    half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if half is None:
        return None
    version = fsdp_version or int(os.environ.get("FSDP_VERSION", "1"))
    last = {"buffer_dtype": torch.float32} if version == 1 else {"output_dtype": half}
    return {"param_dtype": half, "reduce_dtype": torch.float32, **last}


def is_main_process() -> bool:
    acc = accelerator()
    return acc is None or acc.is_main_process


def num_processes() -> int:
    acc = accelerator()
    return 1 if acc is None else acc.num_processes


def process_index() -> int:
    acc = accelerator()
    return 0 if acc is None else acc.process_index


def sharded() -> bool:
    """True when parameters are split across processes (FSDP), not replicated (DDP)."""
    acc = accelerator()
    return acc is not None and acc.distributed_type.name == "FSDP"


def process_device(requested: str) -> str:
    """Where this process computes: under `accelerate launch` its own device (cuda:LOCAL_RANK, or
    the CPU for a CPU launch), whatever the world's `device` says; else `requested`."""
    acc = accelerator()
    return requested if acc is None else str(acc.device)


def load_device(requested: str) -> str:
    """Where to load a model that is about to be trained: under FSDP the CPU (FSDP moves this
    process's shard to `process_device` when it wraps the model), else `process_device`."""
    return "cpu" if sharded() else process_device(requested)


def prepare_modules(modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The trained modules wrapped for the launch (DDP / FSDP), or as given. Prepared before the
    optimiser exists, as FSDP requires; the wrapped module is what a loss must call."""
    acc = accelerator()
    if acc is None:
        return dict(modules)
    if sharded() and any(_has_lora(m) for m in modules.values()):
        raise ValueError("LoRA is the single-GPU option; with FSDP train the full weights "
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


def all_shards(indices: list[int]) -> list[list[int]]:
    """Every process's `shard` of a global batch, in process order (each process can compute
    them all: the token-budget planner equalises the processes' forward counts without talking)."""
    n = num_processes()
    if n == 1:
        return [list(indices)]
    shard(indices)  # the same divisibility check
    size = len(indices) // n
    return [list(indices[k * size : (k + 1) * size]) for k in range(n)]


def split_evenly(n_items: int) -> tuple[int, int]:
    """This process's contiguous [start, end) of `n_items` (a work split, e.g. the reference
    pass; the first n_items % N processes take one more)."""
    n, k = num_processes(), process_index()
    base, extra = divmod(n_items, n)
    start = k * base + min(k, extra)
    return start, start + base + (1 if k < extra else 0)


def gather_lists(items: list) -> list:
    """Concatenate every process's `items`, in process order (all processes get the result)."""
    acc = accelerator()
    if acc is None or acc.num_processes == 1:
        return list(items)
    import torch.distributed as dist

    gathered: list = [None] * acc.num_processes
    dist.all_gather_object(gathered, list(items))
    return [x for part in gathered for x in part]


def wait_for_everyone() -> None:
    acc = accelerator()
    if acc is not None:
        acc.wait_for_everyone()


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
    """Clip the global gradient norm (across shards under FSDP); returns the norm before clipping."""
    import torch

    acc = accelerator()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if acc is None else acc.clip_grad_norm_(params, max_norm)
    return float(norm) if norm is not None else float("nan")


def _has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def save_trained(model: nn.Module, out_dir: str | Path, tokenizer=None) -> None:
    """Save a trained causal LM or RouterModel (the live module from `train_loop`) as an ordinary
    HF / router directory in the world's dtype: LoRA merged, training-only settings undone. Under
    `accelerate launch` every process must call it: sharded weights are gathered (and cast from
    the fp32 master shards to the world dtype), and only the main process writes."""
    acc = accelerator()
    if acc is None:
        finalize_for_saving(model).save_pretrained(out_dir)
    else:
        acc.wait_for_everyone()
        state = acc.get_state_dict(model) if sharded() else None  # collective: every process joins
        unwrapped = acc.unwrap_model(model)
        if acc.is_main_process:
            if state is None:
                finalize_for_saving(unwrapped).save_pretrained(out_dir)
            else:
                dtype = getattr(unwrapped, "_fusionroute_save_dtype", None)
                if dtype is not None:
                    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
                finalize_for_saving(unwrapped).save_pretrained(out_dir, state_dict=state)
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
    kind = _distributed_type(config_text)
    if kind == "DEEPSPEED":
        raise ValueError(f"{options.accelerate_config}: DeepSpeed is not supported; shard with FSDP "
                         "(config/accelerate/fsdp.yaml)")
    if kind == "FSDP" and model_source is not None:
        layer = _decoder_layer_class(model_source)
        if layer:
            cmd += ["--fsdp_transformer_layer_cls_to_wrap", layer]
    return cmd + ["-m", "fusionroute.steps", "run-step", job_file]


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
        env = {**os.environ, LAUNCHED_ENV: "1", DTYPE_ENV: str(params.get("dtype", "float32"))}
        subprocess.run(accelerate_command(job_file, options, model_source), check=True, env=env)
    finally:
        os.unlink(job_file)
    return True

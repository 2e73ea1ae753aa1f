"""The planner: estimated peak GPU memory and GPU-hours of every GPU rule, checked against the
resources the SLURM profile gives it, before anything is submitted.

    python -m fusionroute.plan --configfile config/paper.yaml                 # table; exit 1 if a rule does not fit
    python -m fusionroute.plan --configfile config/paper.yaml --markdown plan.md --json plan.json
    snakemake results/paper/plan.md --configfile config/paper.yaml --cores 1  # the same, as a workflow target

For every (rule, family) the table gives the estimated peak memory of one GPU, the GPU memory
the profile gives it (one `--gpu-mem-gib` GPU per `gpu` unit of `set-resources`), the estimated
host memory against `mem_mb`, the estimated wall time against `runtime` (minutes) and GPU-hours.
A row that does not fit names the rule, the family and the setting to change, with a value that
the same formulas say fits; the command then exits 1. Nothing is loaded: model shapes come from
config.json files (local model directories, the Hugging Face cache, offline) or, for the paper's
hub ids, from the table of their public config values below (`KNOWN_SHAPES`); the output says
which source each shape came from.

What each step holds (the code this models; `git grep` the names)
-----------------------------------------------------------------
- expert_features (fusionroute/features.py): ONE expert at a time, no grad, length-sorted batches
  of at most `max_tokens_per_batch` padded tokens (DEFAULT_MAX_TOKENS_PER_BATCH); the decoder's
  hidden states, never [batch, length, vocab] logits: the output layer runs over chunks of
  response positions, each chunk's logits in the model dtype plus one fp32 copy of at most
  LOGIT_CHUNK_BYTES.
- router_sft / finetuned_sft / the training half of router_mix, finetuned_mix
  (fusionroute/training.py, trainers.py, losses.py, scaling.py): the policy only (the (C)DPO
  reference log-probs are computed before the policy is loaded and stored). Per parameter that is
  trained: fp32 master weight 4 + fp32 gradient 4 + AdamW 8 bytes, plus, in a bf16/fp16 world, the
  autocast cache's bf16 copy of every trained matrix during the forward (2 bytes); frozen weights
  (LoRA's base) stay in the world dtype. Activations of one micro-batch of `micro_batch_size`
  rows x `max_len` tokens (a preference pair is two rows: chosen and rejected; mix training is
  planned with every sample a pair), or of `max_tokens_per_micro_batch` padded tokens when set:
  per decoder layer and token, the bytes autograd saves (the coefficients of `_ACTIVATION`,
  counted tensor by tensor for the Llama and Gemma-2 layers of transformers 5 and PEFT LoRA, with
  and without master weights); with gradient checkpointing only each layer's input, plus one
  layer's saved set while it is recomputed. Logits: the model's [rows, length, vocab] output in
  the compute dtype (Gemma-2's soft-capping also keeps its tanh output, and makes one more
  transient copy in the forward) plus, in the backward, one gradient of that size at a time; the
  log-softmax is chunked (fp32 chunks of LOGPROB_CHUNK_ELEMENTS, no fp32 copy of the whole
  tensor). Full fine-tuning also holds, briefly, a weight's bf16 gradient and its fp32 copy (the
  output layer is the largest). AdamW's step: foreach temporaries (8 bytes per trained parameter)
  on a GPU. The peak is the largest of four moments: the end of the forward, the backward through
  the output layer, the backward through a (recomputed) layer, the optimiser step.
- the reference pass of router_mix / finetuned_mix: the SFT model, no grad, batches of
  `reference_batch_size` pairs (2 rows each) within the token budget; a router's forward returns
  every layer's hidden states (output_hidden_states) besides its [rows, length, vocab] logits.
- generate (fusionroute/decoding/, baselines/*): every model of the method in the world dtype
  plus preallocated KV caches (2 x layers x kv_heads x head_dim x capacity x rows x bytes, every
  layer full attention, capacity = longest prompt + max_new_tokens + 1):
  single: one model and cache; fusionroute: the router and every expert, each with a cache over
  the batch; sequence_selection: every expert and the reward model, one expert decoding (one
  cache) at a time, then the reward model reads each response; collab: every expert with a cache,
  the fork of one expert's cache for the lookahead of its top_k candidates per row
  (rows x top_k rows), and the reward model reading every candidate (batches of 16). A cache is
  counted as freed when the code drops it. (At the time of writing fusionroute.decoding.cache._RowCache
  and its layers reference each other, so a dropped cache waits for Python's cycle collector;
  Collab then holds several forked caches at once. tests/test_plan.py marks this as an expected
  failure until the cycle is broken.)
- merge: CPU only (mergekit streams tensors); host memory only.

Assumptions (each a CLI option; the defaults are printed with the table)
----------------------------------------------------------------------
- GPU: `--gpu-mem-gib 80` per GPU (an A100/H100 80GB), of which `--usable 0.92` is usable by
  tensors (CUDA context, allocator fragmentation). Compute `--peak-tflops 312` (A100 dense bf16)
  at `--mfu 0.40` sustained for training and prefill; memory bandwidth `--hbm-tbps 2.0` at
  `--bw-efficiency 0.6` for decoding steps, which read every weight (and the KV cache) per call;
  `--call-overhead-ms 0.4` per decoder layer and model call (eager PyTorch/HF kernel launches and
  Python: an 8B model decoding at batch 1 in eager HF code runs at about 30 tokens/s, of which the
  weight reads explain about 10 ms per token).
- FLOPs: training 6 x matmul parameters x tokens (4 x with LoRA: no weight gradients of the frozen
  base) + 2 x more with gradient checkpointing (the recomputed forward), plus attention
  (2 x length x query width per layer and token, causal, x3 for training); forward passes
  2 x matmul parameters x tokens. Embedding lookups are not matmuls; a tied output layer is.
- Token counts: memory is planned for the worst micro-batch (every row `max_len` tokens: a batch
  of length-sorted samples reaches it as soon as a few dozen samples are truncated), time for the
  mean. The mean training sequence (prompt + response) is `--mean-train-tokens` (default 600:
  PerfectBlend first turns and OpenHermesPreferences responses are a few hundred tokens), or,
  when the world's data files exist (build/<world>/data/*.jsonl), their mean characters / 4.
  Mix training: a pool of n_sft samples and n_pref pairs, so (n_sft + 2 n_pref) / (n_sft + n_pref)
  rows per sample. Decoding: prompts of `--prompt-tokens` (default 1024, at most max_len) at most and
  `--mean-prompt-tokens` (default 250) on average; every batch decodes max_new_tokens steps (a
  batch runs until its longest row stops) with all rows live (an upper bound); FusionRoute calls
  the router and every expert at each step (at batch 16 each expert is usually picked by some row).
- Model loading: `--load-gbps 1.0` GB/s from disk per job, once per model.
- Host memory: tokenised samples are Python lists of ints (about 36 bytes per token and list,
  input ids and labels), expert features 8 bytes per response token and expert, a model passes
  through host memory once while loading, plus `--host-base-gib 6` (Python, torch, CUDA).
- Multi-GPU: `training.launcher: accelerate` + `num_processes: N` is FSDP (config/accelerate/
  fsdp.yaml; full fine-tuning only): master weights, gradients and AdamW states sharded N ways,
  each process also holding the all-gathered bf16 weights of two decoder layers and of the
  embeddings/output layer, and the same micro-batch; 1/N of the steps' work each.
  expert_features with `gpu: N` splits its shards over the N GPUs.
- The estimates describe transformers 5.x / PEFT 0.2x code (the activation coefficients were
  counted on it); tests/test_plan.py fails when a new version changes them by more than its
  tolerance.

The formulas are checked against the peak memory MEASURED for the same steps on small models in
tests/test_plan.py (CPU: the profiler's allocation events, the analogue of
torch.cuda.max_memory_allocated), within a stated factor.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable

from fusionroute.catalog import family_methods, load_catalog

GIB = 2**30
GB = 10**9

# Settings of the code the plan models, read from the modules when they import (else the values
# they had when this planner was written).


def _const(module: str, name: str, default):
    try:
        import importlib

        return getattr(importlib.import_module(module), name, default)
    except Exception:  # noqa: BLE001 - a module being reworked must not stop the planner
        return default


LOGPROB_CHUNK_ELEMENTS = _const("fusionroute.losses", "LOGPROB_CHUNK_ELEMENTS", 1 << 25)
FEATURE_MAX_TOKENS = _const("fusionroute.features", "DEFAULT_MAX_TOKENS_PER_BATCH", 16384)
LOGIT_CHUNK_BYTES = _const("fusionroute.features", "LOGIT_CHUNK_BYTES", 256 * 2**20)
DEFAULT_LORA_TARGETS = _const("fusionroute.scaling", "DEFAULT_LORA_TARGETS",
                              ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
AUTO_LORA = _const("fusionroute.scaling", "AUTO_LORA", {"r": 64, "alpha": 128})
DEFAULT_LORA_ABOVE_PARAMS = _const("fusionroute.scaling", "DEFAULT_LORA_ABOVE_PARAMS", 3.0e9)
REFERENCE_BATCH_SIZE = 16     # fusionroute.steps.train.mix_train: optim.reference_batch_size default
REWARD_BATCH_SIZE = 16        # baselines.methods: reward_batch_size default
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ----------------------------------------------------------------------------------------------
# Model shapes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need of a model. `layout`: "llama" (Llama, Mistral, Gemma-1: two norms
    per layer, SDPA attention) or "gemma2" (four norms per layer, eager attention with logit
    soft-capping, which materialises [rows, heads, length, length] scores)."""

    name: str
    layout: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    lm_head: bool = True              # False: a sequence classifier (reward model), one-row score head
    final_softcap: float | None = None
    source: str = ""

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def eager(self) -> bool:
        return self.layout == "gemma2"

    @property
    def norms(self) -> int:
        return 4 if self.layout == "gemma2" else 2

    def layer_matrix_params(self) -> int:
        h = self.hidden
        return h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h + 3 * h * self.intermediate

    def layer_params(self) -> int:
        return self.layer_matrix_params() + self.norms * self.hidden

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        """Output layer weights that are not the embedding (0 when tied; a score row for a classifier)."""
        if not self.lm_head:
            return self.hidden
        return 0 if self.tied else self.vocab * self.hidden

    def params(self) -> int:
        return self.embedding_params() + self.layers * self.layer_params() + self.hidden + self.head_params()

    def matmul_params(self) -> int:
        """Parameters multiplied per token: the decoder's matrices and the output layer."""
        out = self.vocab * self.hidden if self.lm_head else self.hidden
        return self.layers * self.layer_matrix_params() + out

    def largest_matrix(self) -> int:
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def lora_params(self, r: int, targets: Iterable[str]) -> int:
        h, i = self.hidden, self.intermediate
        dims = {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return self.layers * sum(r * (a + b) for a, b in (dims[t] for t in targets if t in dims))


def _llama(hidden, layers, heads, kv, head_dim, inter, vocab, tied=False, layout="llama", lm_head=True,
           softcap=None) -> dict:
    return dict(layout=layout, hidden=hidden, layers=layers, heads=heads, kv_heads=kv, head_dim=head_dim,
                intermediate=inter, vocab=vocab, tied=tied, lm_head=lm_head, final_softcap=softcap)


# Public config.json values of the paper's hub checkpoints (offline planning needs no download).
KNOWN_SHAPES: dict[str, dict] = {
    "meta-llama/Llama-3.1-8B-Instruct": _llama(4096, 32, 32, 8, 128, 14336, 128256),
    "meta-llama/Llama-3.1-8B": _llama(4096, 32, 32, 8, 128, 14336, 128256),
    "google/gemma-2-2b-it": _llama(2304, 26, 8, 4, 256, 9216, 256000, tied=True, layout="gemma2", softcap=30.0),
    "google/gemma-2-2b": _llama(2304, 26, 8, 4, 256, 9216, 256000, tied=True, layout="gemma2", softcap=30.0),
    # Llama's reward model: a MistralForSequenceClassification (Mistral-7B-Instruct)
    "Ray2333/reward-model-Mistral-7B-instruct-Unified-Feedback": _llama(4096, 32, 32, 8, 128, 14336, 32000,
                                                                       lm_head=False),
    # Gemma's reward model: a GemmaForSequenceClassification (Gemma-1 2B)
    "weqweasdas/RM-Gemma-2B": _llama(2048, 18, 8, 1, 256, 16384, 256000, tied=True, lm_head=False),
}
# Fine-tunes with their base model's architecture (MergeBench's experts).
KNOWN_PREFIXES = {
    "MergeBench/Llama-3.1-8B-Instruct_": "meta-llama/Llama-3.1-8B-Instruct",
    "MergeBench/gemma-2-2b-it_": "google/gemma-2-2b-it",
}


def shape_from_config(name: str, config: Any, source: str) -> ModelShape:
    """A ModelShape from a transformers config object (or its text config)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", "") or ""
    heads = int(text.num_attention_heads)
    hidden = int(text.hidden_size)
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    architectures = getattr(config, "architectures", None) or []
    classifier = any("SequenceClassification" in a for a in architectures)
    layout = "gemma2" if model_type in ("gemma2",) else "llama"
    if model_type not in ("llama", "mistral", "gemma", "gemma2", "qwen2"):
        source += f" ({model_type or 'unknown'} model: planned as a Llama-style decoder)"
    return ModelShape(name=name, layout=layout, hidden=hidden, layers=int(text.num_hidden_layers), heads=heads,
                      kv_heads=int(getattr(text, "num_key_value_heads", None) or heads), head_dim=int(head_dim),
                      intermediate=int(text.intermediate_size), vocab=int(text.vocab_size),
                      tied=bool(getattr(text, "tie_word_embeddings", False)), lm_head=not classifier,
                      final_softcap=getattr(text, "final_logit_softcapping", None), source=source)


def resolve_shape(spec: Any, overrides: dict[str, str] | None = None) -> ModelShape:
    """The shape of a model source (directory, hub id or {path|package, file}): a local
    config.json, the HF cache (offline), or KNOWN_SHAPES, in that order."""
    overrides = overrides or {}
    name = spec if isinstance(spec, str) else (spec.get("path") or f"{spec.get('package')}:{spec.get('file')}")
    if name in overrides:
        from transformers import AutoConfig

        path = overrides[name]
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        return shape_from_config(name, config, f"--model-config {path}")
    path = Path(str(name))
    if path.is_dir() and (path / "config.json").exists():
        from transformers import AutoConfig

        return shape_from_config(name, AutoConfig.from_pretrained(str(path), local_files_only=True),
                                 f"local {path / 'config.json'}")
    if isinstance(spec, str) and not path.exists():
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(name, local_files_only=True)
            return shape_from_config(name, config, "config.json in the HF cache")
        except Exception:  # noqa: BLE001 - not cached: the table below
            pass
        if name in KNOWN_SHAPES:
            return ModelShape(name=name, source="built-in table (public config.json)", **KNOWN_SHAPES[name])
        for prefix, base in KNOWN_PREFIXES.items():
            if name.startswith(prefix):
                return ModelShape(name=name, source=f"built-in table (fine-tune of {base}: same config)",
                                  **KNOWN_SHAPES[base])
    raise LookupError(f"no shape for model {name!r}: not a local directory with config.json, not in the HF cache, "
                      "not in fusionroute.plan.KNOWN_SHAPES; pass --model-config "
                      f"'{name}=<directory with its config.json>'")


def tiny_shape(config: dict, name: str) -> ModelShape:
    arch = config["tiny"]["architecture"]
    heads = int(arch["num_attention_heads"])
    return ModelShape(name=name, layout="llama", hidden=int(arch["hidden_size"]), layers=int(arch["num_hidden_layers"]),
                      heads=heads, kv_heads=int(arch.get("num_key_value_heads", heads)),
                      head_dim=int(arch["hidden_size"]) // heads, intermediate=int(arch["intermediate_size"]),
                      vocab=int(config["tiny"]["vocab_size"]), tied=False, source="config tiny.architecture")


# ----------------------------------------------------------------------------------------------
# Memory of one step
# ----------------------------------------------------------------------------------------------

# Bytes autograd keeps per decoder layer and token, as (hidden, query width, key/value width,
# intermediate, per LoRA target and rank): counted tensor by tensor (torch saved-tensor hooks) on
# the layers of transformers 5.x with PEFT LoRA. "fp32": a float32 world; "mixed": fp32 master
# weights under bf16 autocast (the world dtype bf16/fp16). E.g. Llama fp32, full fine-tuning:
# 6 hidden-sized tensors (layer input, two norm stages each of the two norms' ...), q after RoPE
# and the attention output, k and v, 4 intermediate-sized (gate, act, up, product), all fp32.
# Mixed: the residual stream and norms stay fp32 (the fp32 embedding output), every linear saves
# its own bf16 cast of its input, the rest is bf16. LoRA: frozen norm weights save nothing, each
# adapted linear saves its own copy of its input (PEFT casts it to the adapter's dtype and
# autocast back) and its rank-r down-projection. Gemma-2 (eager attention): repeated k and v,
# four norms, and 8 bytes per attention score (tanh output + fp32 softmax + its bf16 copy).
_ACTIVATION = {
    ("llama", "fp32", "full"): (24, 8, 8, 16, 0),
    ("llama", "fp32", "lora"): (16, 8, 8, 16, 4),
    ("llama", "mixed", "full"): (26, 4, 4, 8, 0),
    ("llama", "mixed", "lora"): (18, 6, 4, 8, 2),
    ("gemma2", "fp32", "full"): (40, 16, 0, 16, 0),
    ("gemma2", "fp32", "lora"): (24, 16, 0, 16, 4),
    ("gemma2", "mixed", "full"): (42, 8, 0, 8, 0),
    ("gemma2", "mixed", "lora"): (26, 8, 0, 8, 2),
}
SCORE_BYTES_SAVED = 8        # eager attention, per (row, head, query, key), saved for backward
SCORE_BYTES_GRAD = 4         # eager attention backward: one gradient of the scores beside the saved ones
SCORE_BYTES_TRANSIENT = 11   # eager attention without grad: scores, soft-capped copy, fp32 softmax, bf16 copy


@dataclass
class Estimate:
    """Peak bytes of one step: the phase where it peaks and what is alive then."""

    peak: float
    phase: str
    parts: dict[str, float]
    phases: dict[str, float] = field(default_factory=dict)

    def gib(self) -> float:
        return self.peak / GIB


def _pick(phases: dict[str, dict[str, float]]) -> Estimate:
    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    worst = max(totals, key=totals.get)
    return Estimate(totals[worst], worst, phases[worst], totals)


@dataclass(frozen=True)
class TrainSetting:
    """One training micro-step: a policy of `shape` trained on `rows` rows of `seq_len` tokens."""

    dtype: str = "bfloat16"                # the world dtype
    lora: dict | None = None               # {r, target_modules?} or None (full fine-tuning)
    gradient_checkpointing: bool = True
    rows: int = 16
    seq_len: int = 2048
    router_experts: int = 0                # > 0: a RouterModel (routing head over that many experts)
    logprob_chunk_elements: int = LOGPROB_CHUNK_ELEMENTS
    foreach: bool = True                   # AdamW's foreach implementation (CUDA's default)
    processes: int = 1                     # FSDP processes (full fine-tuning sharded N ways)


def _mode(dtype: str) -> tuple[str, int, int]:
    """(activation mode, weight bytes, compute bytes)."""
    b = DTYPE_BYTES[dtype]
    return ("fp32", 4, 4) if b == 4 else ("mixed", b, 2)


def _lora_targets(lora: dict) -> list[str]:
    return list(lora.get("target_modules") or DEFAULT_LORA_TARGETS)


def layer_activation_bytes(shape: ModelShape, dtype: str, lora: dict | None, tokens: float) -> float:
    """Bytes autograd saves in one decoder layer for `tokens` tokens (scores excluded)."""
    mode, _, _ = _mode(dtype)
    ch, cq, ckv, ci, cr = _ACTIVATION[(shape.layout, mode, "lora" if lora else "full")]
    per_token = ch * shape.hidden + cq * shape.q_dim + ckv * shape.kv_dim + ci * shape.intermediate
    if lora:
        per_token += cr * int(lora["r"]) * len(_lora_targets(lora))
    per_token += 4 * (shape.norms + (0 if shape.eager else shape.heads))  # rsqrt per norm, attention logsumexp
    return per_token * tokens


def _logits_parts(shape: ModelShape, tokens: float, compute_bytes: int, chunk_elements: int,
                  backward: bool) -> dict[str, float]:
    """The [tokens, vocab] tensors of the loss: the model's logits (+ Gemma-2's tanh output, saved
    for the backward), the log-softmax's fp32 part, and in the backward the logits' gradient."""
    nv = tokens * shape.vocab
    softcap = 1 if shape.final_softcap else 0
    parts = {"logits": (1 + softcap) * nv * compute_bytes}
    if nv <= chunk_elements:
        # small logits: one fp32 copy of the whole tensor (losses.gather_logprobs) and, in the
        # backward, the log-softmax's fp32 gradients
        parts["logits fp32 copy"] = nv * (0 if compute_bytes == 4 else 4)
        if backward:
            parts["logits gradients"] = nv * (2 * 4 + compute_bytes)
        return parts
    rows = max(1, chunk_elements // shape.vocab)
    parts["log-prob fp32 chunks"] = 2 * min(rows, tokens) * shape.vocab * 4
    if backward:
        # the chunked backward's gradient (one tensor like the logits; the soft-capping chain then
        # frees the logits as it makes the next gradient: tanh output + two gradients at most).
        # Mix training's slices (SFT rows, preference rows) add no full-size copy (measured).
        parts["logits gradients"] = nv * compute_bytes
    return parts


def train_memory(shape: ModelShape, s: TrainSetting) -> Estimate:
    """Peak memory of one micro-batch of training (forward, backward, optimiser step), per GPU."""
    mode, wb, cb = _mode(s.dtype)
    n = s.processes
    head = shape.hidden * s.router_experts
    grad_extra = 2 if mode == "mixed" else 0  # autocast: a weight's bf16 gradient before its fp32 copy
    if s.lora:
        trained = shape.lora_params(int(s.lora["r"]), _lora_targets(s.lora)) + head
        frozen = shape.params()
        cast = 2 * trained if mode == "mixed" else 0          # autocast's copies of the adapters
        head_cast = 0
        residual = wb                                         # frozen embeddings: a world-dtype residual stream
        weight_grad = 0
        layer_weight_grad = 0
    else:
        trained, frozen = shape.params() + head, 0
        linear = shape.layers * shape.layer_matrix_params() + (shape.vocab * shape.hidden if shape.lm_head else 0)
        cast = 2 * linear if mode == "mixed" and n == 1 else 0  # FSDP gathers bf16 weights instead
        head_cast = 2 * shape.vocab * shape.hidden if mode == "mixed" and n == 1 else 0
        residual = 4                                          # fp32 master embeddings: an fp32 residual stream
        weight_grad = shape.largest_matrix() * (4 + grad_extra)
        layer_weight_grad = (shape.layer_params() if n > 1 else shape.hidden * shape.intermediate) * (4 + grad_extra)
    tokens = s.rows * s.seq_len
    static = {"trained weights (fp32 master)": 4 * trained / n, "gradients (fp32)": 4 * trained / n,
              "AdamW states (fp32)": 8 * trained / n}
    if frozen:
        static["frozen weights"] = wb * frozen
    if n > 1:  # FSDP: each unit's bf16 weights are all-gathered for its forward/backward (and prefetched)
        static["all-gathered bf16 weights (2 layers + embeddings/output)"] = cb * (
            2 * shape.layer_params() + shape.embedding_params() + shape.head_params())
    scores_saved = SCORE_BYTES_SAVED * s.rows * shape.heads * s.seq_len ** 2 if shape.eager else 0
    one_layer = layer_activation_bytes(shape, s.dtype, s.lora, tokens) + scores_saved
    if s.gradient_checkpointing:
        layers_saved = {"checkpointed layer inputs": shape.layers * tokens * shape.hidden * residual}
    else:
        layers_saved = {"saved activations (all layers)": shape.layers * one_layer}
    head_saved = {"final norm, output-layer input": tokens * shape.hidden * (10 if mode == "mixed" else 12)}
    if s.router_experts:
        head_saved["routing head, features"] = tokens * (2 * shape.hidden + 16 * s.router_experts)
    fwd = _logits_parts(shape, tokens, cb, s.logprob_chunk_elements, backward=False) if shape.lm_head else {}
    if shape.final_softcap and shape.lm_head:
        fwd["soft-capping transient"] = tokens * shape.vocab * cb
    bwd = _logits_parts(shape, tokens, cb, s.logprob_chunk_elements, backward=True) if shape.lm_head else {}
    phases: dict[str, dict[str, float]] = {}
    phases["end of forward"] = {**static, "autocast bf16 weight copies": cast, **layers_saved, **head_saved, **fwd}
    phases["backward through the output layer"] = {
        **static, "autocast bf16 weight copies": head_cast if s.gradient_checkpointing else cast, **layers_saved,
        **head_saved, **bwd, "weight-gradient transient": weight_grad}
    if s.gradient_checkpointing:
        # recomputing a layer: its whole saved set, then its backward's gradients
        grads = tokens * (2 * shape.intermediate * cb + 2 * shape.hidden * 4 + (8 * shape.hidden if s.lora else 0))
        if shape.eager:
            grads += SCORE_BYTES_GRAD * s.rows * shape.heads * s.seq_len ** 2
        phases["backward through a checkpointed layer"] = {
            **static, **layers_saved, "recomputed layer": one_layer, "layer gradients": grads,
            "weight-gradient transient": layer_weight_grad}
    largest = shape.largest_matrix() if s.lora is None else shape.hidden * shape.intermediate
    opt = 8 * trained / n if s.foreach else 8 * largest
    phases["optimiser step"] = {**static, "AdamW temporaries": opt}
    return _pick(phases)


def inference_layer_transient(shape: ModelShape, rows: int, new: int, past: int, dtype_bytes: int) -> float:
    """Peak bytes inside one decoder layer without grad (the layer's input not counted): the MLP's
    three intermediate-sized tensors (activation, up projection, product) beside the norm's
    copies, or, when larger, the attention: q, k, v and, for eager attention, the scores (the
    matmul, soft-capped and masked copies, fp32 softmax and its cast; about 11 bytes each at the
    peak) with k and v repeated to every head."""
    tokens = rows * new
    b = dtype_bytes
    mlp = tokens * b * (3 * shape.intermediate + 4.5 * shape.hidden)
    attn = tokens * b * (shape.q_dim + 2 * shape.kv_dim + 2 * shape.hidden)
    if shape.eager:
        attn += SCORE_BYTES_TRANSIENT * rows * shape.heads * new * (new + past)
        attn += 2 * rows * shape.q_dim * (new + past) * b
    return max(mlp, attn)


def reference_pass_memory(shape: ModelShape, rows: int, seq_len: int, dtype: str, router: bool,
                          chunk_elements: int = LOGPROB_CHUNK_ELEMENTS) -> Estimate:
    """The (C)DPO reference pass: no grad, full logits of `rows` rows, sequence log-probs."""
    b = DTYPE_BYTES[dtype]
    tokens = rows * seq_len
    weights = {"weights": b * shape.params()}
    if router:  # RouterModel asks for every layer's hidden states
        stream = {"every layer's hidden states (router output)": (shape.layers + 1) * tokens * shape.hidden * b}
    else:
        stream = {"residual stream": 2 * tokens * shape.hidden * b}
    nv = tokens * shape.vocab
    logits = {"logits": nv * b}
    softcap = nv * b if shape.final_softcap else 0
    if nv <= chunk_elements:  # losses.gather_logprobs: an fp32 copy and logsumexp's fp32 temporary
        logits["log-softmax fp32 (or the soft-capping transient)"] = max(softcap, nv * (4 + (4 if b != 4 else 0)))
    else:
        if softcap:
            logits["soft-capping transient"] = softcap
        logits["log-prob fp32 chunks"] = 2 * min(max(1, chunk_elements // shape.vocab), tokens) * shape.vocab * 4
    layers = {"layer transient": inference_layer_transient(shape, rows, seq_len, 0, b)}
    return _pick({"decoder layers": {**weights, **stream, **layers}, "logits": {**weights, **stream, **logits}})


def features_memory(shape: ModelShape, dtype: str, max_tokens: int, max_len: int,
                    chunk_bytes: int = LOGIT_CHUNK_BYTES) -> Estimate:
    """One expert over a batch of at most `max_tokens` padded tokens (rows x longest), the
    longest batch being max_tokens // max_len rows of max_len tokens (or one row of max_len)."""
    b = DTYPE_BYTES[dtype]
    rows = max(1, max_tokens // max_len)
    tokens = rows * max_len
    chunk_rows = max(1, chunk_bytes // (4 * shape.vocab))
    chunk_rows = min(chunk_rows, tokens)
    chunk = {"output-layer chunk (logits, fp32 copy, log-sum-exp)": chunk_rows * shape.vocab * (b + 4 + 4)
             + (chunk_rows * shape.vocab * b if shape.final_softcap else 0)}
    weights = {"weights": b * shape.params()}
    layers = {"residual stream": 2 * tokens * shape.hidden * b,
              "layer transient": inference_layer_transient(shape, rows, max_len, 0, b)}
    head = {"hidden states": tokens * shape.hidden * b, "response positions": tokens * shape.hidden * b, **chunk}
    return _pick({"decoder": {**weights, **layers}, "output layer chunks": {**weights, **head}})


@dataclass(frozen=True)
class DecodeSetting:
    kind: str                     # single | fusionroute | sequence_selection | collab
    rows: int                     # generation.batch_size
    prompt: int                   # longest prompt of a batch (tokens)
    max_new: int
    dtype: str = "bfloat16"
    top_k: int = 2
    lookahead: int = 0
    reward_batch: int = REWARD_BATCH_SIZE


def decode_memory(models: dict[str, ModelShape], s: DecodeSetting) -> Estimate:
    """`models`: role -> shape ("model"; "router" + "expert:<name>"; "expert:<name>" + "reward")."""
    b = DTYPE_BYTES[s.dtype]
    weights = {f"weights: {role}": b * m.params() for role, m in models.items()}
    experts = [m for role, m in models.items() if role.startswith("expert:")]
    deciders = [m for role, m in models.items() if role in ("model", "router")] + (
        experts if s.kind in ("fusionroute", "collab") else experts[:1])
    extra = s.lookahead + 1 if s.kind == "collab" else 1
    capacity = s.prompt + s.max_new + extra
    caches: dict[str, float] = {}
    for role, m in models.items():
        if role == "reward":
            continue
        if s.kind == "sequence_selection" and role.startswith("expert:"):
            continue
        caches[f"KV cache: {role}"] = s.rows * capacity * m.kv_bytes_per_token(b)
    if s.kind == "sequence_selection":
        biggest = max(experts, key=lambda m: m.kv_bytes_per_token(b))
        caches["KV cache: the decoding expert"] = s.rows * capacity * biggest.kv_bytes_per_token(b)
    phases: dict[str, dict[str, float]] = {}
    # prefill of the longest prompts by the largest decoding model (plus, for the router, its
    # hidden states: RouterModel asks for every layer's)
    big = max(deciders or experts, key=lambda m: m.params())
    prefill = {"prefill transient": inference_layer_transient(big, s.rows, s.prompt, 0, b)
               + 2 * s.rows * s.prompt * big.hidden * b + s.rows * big.vocab * 4 * 3}
    if "router" in models:
        r = models["router"]
        prefill["router hidden states (prefill)"] = (r.layers + 1) * s.rows * s.prompt * r.hidden * b
    phases["prefill"] = {**weights, **caches, **prefill}
    if s.kind == "collab" and s.lookahead > 0:
        biggest = max(experts, key=lambda m: m.kv_bytes_per_token(b))
        phases["lookahead (forked cache)"] = {
            **weights, **caches,
            "forked KV cache (rows x top_k)": s.rows * s.top_k * (s.prompt + s.max_new + s.lookahead)
            * biggest.kv_bytes_per_token(b)}
    if "reward" in models:
        rm = models["reward"]
        length = s.prompt + s.max_new + (s.lookahead if s.kind == "collab" else 0)
        rows = min(s.reward_batch, s.rows * (len(experts) * s.top_k if s.kind == "collab" else len(experts)))
        kept = caches if s.kind == "collab" else {}
        phases["reward model scoring"] = {
            **weights, **kept,
            "reward model forward": inference_layer_transient(rm, rows, length, 0, b)
            + 4 * rows * length * rm.hidden * b + rows * length ** 2}  # embeddings, residual, 4-D mask
    return _pick(phases)


# ----------------------------------------------------------------------------------------------
# Time
# ----------------------------------------------------------------------------------------------


def _knob(default: float, about: str) -> Any:
    """A hardware figure with its command-line help (each one is a `--flag` of `main`)."""
    return field(default=default, metadata={"help": about})


@dataclass(frozen=True)
class Hardware:
    gpu_mem_gib: float = _knob(80.0, "GPU memory of one `gpu` unit, GiB")
    usable: float = _knob(0.92, "share of the GPU memory a rule may fill")
    peak_tflops: float = _knob(312.0, "peak TFLOP/s of one GPU")
    mfu: float = _knob(0.40, "sustained share of the peak (model FLOPs utilisation)")
    hbm_tbps: float = _knob(2.0, "GPU memory bandwidth, TB/s")
    bw_efficiency: float = _knob(0.6, "share of the bandwidth reached while decoding")
    call_overhead_ms: float = _knob(0.4, "overhead per layer and model call, ms")
    load_gbps: float = _knob(1.0, "checkpoint loading speed, GB/s")
    host_base_gib: float = _knob(6.0, "host memory of a process besides its data and weights, GiB")

    @property
    def flops(self) -> float:
        return self.peak_tflops * 1e12 * self.mfu

    @property
    def bandwidth(self) -> float:
        return self.hbm_tbps * 1e12 * self.bw_efficiency


def attention_flops(shape: ModelShape, context: float) -> float:
    """Forward attention FLOPs per token at `context` (causal: half of QK^T and AV)."""
    return shape.layers * 2 * context * shape.q_dim * (2 if shape.eager else 1)


def train_flops(shape: ModelShape, tokens: float, mean_len: float, lora: bool, checkpointing: bool) -> float:
    per = shape.matmul_params() * 2 + attention_flops(shape, mean_len)
    factor = (2 if lora else 3) + (1 if checkpointing else 0)  # fwd 1 + bwd (1 or 2) + recompute 1
    return per * factor * tokens


def forward_seconds(shape: ModelShape, hw: Hardware, rows: int, new: int, context: float, dtype_bytes: int) -> float:
    """One model call over `rows` rows of `new` tokens after `context` cached ones: the slower of
    compute and reading the weights and KV cache, plus per-layer call overhead."""
    tokens = rows * new
    flops = tokens * (2 * shape.matmul_params() + attention_flops(shape, context + new / 2))
    read = shape.params() * dtype_bytes + rows * (context + new) * shape.kv_bytes_per_token(dtype_bytes)
    return max(flops / hw.flops, read / hw.bandwidth) + shape.layers * hw.call_overhead_ms / 1000


def decode_batch_seconds(models: dict[str, ModelShape], s: DecodeSetting, hw: Hardware, mean_prompt: float,
                         steps: int) -> float:
    """One batch of `rows` prompts decoded for `steps` steps (see the module docstring)."""
    b = DTYPE_BYTES[s.dtype]
    experts = [m for role, m in models.items() if role.startswith("expert:")]
    total = 0.0
    if s.kind == "single":
        m = models["model"]
        total += forward_seconds(m, hw, s.rows, int(mean_prompt), 0, b)
        total += sum(forward_seconds(m, hw, s.rows, 1, mean_prompt + t, b) for t in range(steps))
    elif s.kind == "fusionroute":
        for m in [models["router"], *experts]:
            total += forward_seconds(m, hw, s.rows, int(mean_prompt), 0, b)
        share = max(1, s.rows // max(1, len(experts)))
        for t in range(steps):
            total += forward_seconds(models["router"], hw, s.rows, 1, mean_prompt + t, b)
            total += sum(forward_seconds(m, hw, share, 1, mean_prompt + t, b) for m in experts)
    elif s.kind == "sequence_selection":
        for m in experts:
            total += forward_seconds(m, hw, s.rows, int(mean_prompt), 0, b)
            total += sum(forward_seconds(m, hw, s.rows, 1, mean_prompt + t, b) for t in range(steps))
        rm = models["reward"]
        n = s.rows * len(experts)
        total += math.ceil(n / s.reward_batch) * forward_seconds(rm, hw, min(n, s.reward_batch),
                                                                  int(mean_prompt + steps), 0, b)
    elif s.kind == "collab":
        rm = models["reward"]
        candidates = s.rows * len(experts) * s.top_k
        for m in experts:
            total += forward_seconds(m, hw, s.rows, int(mean_prompt), 0, b)
        for t in range(steps):
            context = mean_prompt + t
            for m in experts:
                total += forward_seconds(m, hw, s.rows, 1, context, b)
                total += sum(forward_seconds(m, hw, s.rows * s.top_k, 1, context + j, b) for j in range(s.lookahead))
            total += math.ceil(candidates / s.reward_batch) * forward_seconds(
                rm, hw, min(candidates, s.reward_batch), int(context + 1 + s.lookahead), 0, b)
    else:
        raise ValueError(f"unknown method kind {s.kind!r}")
    return total


# ----------------------------------------------------------------------------------------------
# The plan of a config
# ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    rule: str
    family: str
    what: str
    gpus: int
    gpu_gib: float | None          # estimated peak per GPU (None: CPU rule)
    gpu_budget_gib: float | None
    host_gib: float
    host_budget_gib: float | None
    hours: float                   # wall time of the (worst) job
    runtime_budget_h: float | None
    gpu_hours: float               # all jobs of the row
    jobs: int = 1
    phase: str = ""
    problems: list[str] = field(default_factory=list)
    breakdown: dict[str, float] = field(default_factory=dict)  # bytes alive at the peak, by what holds them
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def label(self) -> str:
        """"router_sft (gemma2)", "generate (llama3, collab)"."""
        method = f", {self.what.split(' [')[0]}" if self.rule == "generate" else ""
        return f"{self.rule} ({self.family}{method})"


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(paths: list[str]) -> dict:
    import yaml

    config: dict = {}
    for p in paths:
        config = _deep_merge(config, yaml.safe_load(Path(p).read_text()) or {})
    return config


def load_profile(path: str | None) -> dict[str, dict]:
    """rule -> resources ({gpu, mem_mb, runtime}) from a Snakemake profile directory or file."""
    if not path:
        return {}
    import yaml

    p = Path(path)
    p = p / "config.yaml" if p.is_dir() else p
    profile = yaml.safe_load(p.read_text()) or {}
    defaults = {k: v for k, v in (profile.get("default-resources") or {}).items() if k in ("gpu", "mem_mb", "runtime")}
    out = {"__default__": defaults}
    for rule, res in (profile.get("set-resources") or {}).items():
        out[rule] = {**defaults, **{k: v for k, v in (res or {}).items() if k in ("gpu", "mem_mb", "runtime")}}
    return out


def _resources(profile: dict, rule: str) -> dict:
    return profile.get(rule, profile.get("__default__", {}))


def training_settings(config: dict, family: str) -> dict:
    return {**(config.get("training") or {}), **(config["families"][family].get("training") or {})}


def resolve_lora(settings: dict, n_params: int) -> tuple[dict | None, str]:
    """fusionroute.scaling.ScalingOptions.resolve_lora without a model."""
    sharded = settings.get("launcher") == "accelerate" and int(settings.get("num_processes", 1)) > 1
    if "lora" in settings and settings["lora"] != "auto":
        return settings["lora"], "training.lora"
    above = settings.get("lora_above_params", DEFAULT_LORA_ABOVE_PARAMS)
    if above is None or sharded or n_params <= above:
        return None, "automatic: full fine-tuning"
    return dict(AUTO_LORA), f"automatic: {n_params:.2e} parameters > lora_above_params"


@dataclass
class Assumptions:
    mean_train_tokens: float = 600.0
    prompt_tokens: int = 1024
    mean_prompt_tokens: float = 250.0
    train_tokens_source: str = "assumed (--mean-train-tokens)"


class Planner:
    def __init__(self, config: dict, profile: dict, hw: Hardware, assume: Assumptions,
                 model_configs: dict[str, str] | None = None):
        self.config, self.profile, self.hw, self.assume = config, profile, hw, assume
        self.model_configs = model_configs or {}
        self.shapes: dict[str, ModelShape] = {}
        self.device = config.get("device", "cuda")
        self.dtype = config.get("dtype", "float32")

    # -- models
    def shape(self, family: str, ref: str) -> ModelShape:
        fam = self.config["families"][family]
        key = f"{family}:{ref}"
        if key in self.shapes:
            return self.shapes[key]
        if fam.get("source") == "tiny":
            world = self.config["world"]
            local = {"reward_model": f"build/{world}/{family}/reward_model", "base": f"build/{world}/{family}/base"}
            path = Path(local.get(ref, f"build/{world}/{family}/experts/{ref}"))
            if (path / "config.json").exists():
                shape = resolve_shape(str(path), self.model_configs)
            else:
                shape = tiny_shape(self.config, ref)
            if ref == "reward_model":
                shape = replace(shape, lm_head=False)
        else:
            source = {"reward_model": fam.get("reward_model"), "base": fam.get("base")}.get(ref) \
                or fam["expert_sources"][ref]
            shape = resolve_shape(source, self.model_configs)
        self.shapes[key] = shape
        return shape

    def experts(self, family: str) -> list[str]:
        return list(self.config["families"][family]["experts"])

    # -- budgets
    def budgets(self, rule: str) -> tuple[int, float | None, float | None, float | None]:
        """(GPUs, GPU GiB, host GiB, hours) the profile gives `rule`; without a profile one GPU for
        every rule but merge, and no host memory or time limit."""
        if not self.profile:
            gpus = 0 if rule == "merge" else 1
            return gpus, gpus * self.hw.gpu_mem_gib or None, None, None
        res = _resources(self.profile, rule)
        gpus = int(res.get("gpu", 0) or 0)
        gpu = gpus * self.hw.gpu_mem_gib if gpus else None
        host = res["mem_mb"] * 1e6 / GIB if res.get("mem_mb") else None
        runtime = res["runtime"] / 60 if res.get("runtime") else None
        return gpus, gpu, host, runtime

    def usable(self, gib: float) -> float:
        return gib * self.hw.usable

    # -- data
    def mean_tokens(self) -> float:
        return min(self.assume.mean_train_tokens, self.config["max_len"])

    def train_host_gib(self, n_seqs: float, features: float, model_params: int) -> float:
        tokens = n_seqs * self.mean_tokens()
        return (self.hw.host_base_gib * GIB + tokens * 2 * 36 + features * 8
                + model_params * DTYPE_BYTES[self.dtype]) / GIB

    # -- rows
    def rows(self) -> list[Row]:
        out: list[Row] = []
        for family in self.config["families"]:
            out.append(self.expert_features(family))
            out.append(self.train_row("router_sft", family, "fusionroute", "sft"))
            out.append(self.train_row("router_mix", family, "fusionroute", "mix"))
            out.append(self.train_row("finetuned_sft", family, "finetuned", "sft"))
            out.append(self.train_row("finetuned_mix", family, "finetuned", "mix"))
            out.extend(self.generate_rows(family))
            if self.config["families"][family].get("source") == "tiny":
                out.append(self.train_row("reward_model", family, "reward_model", "train"))
            out.append(self.merge_row(family))
        return out

    def _check(self, row: Row, fix_memory: str = "", fix_time: str = "", check_memory: bool = True) -> Row:
        if not check_memory or self.device == "cpu":
            pass
        elif row.gpu_gib is not None and row.gpu_budget_gib is not None:
            per_gpu = row.gpu_budget_gib / max(1, row.gpus)
            if row.gpu_gib > self.usable(per_gpu):
                row.problems.append(f"needs ~{row.gpu_gib:.0f} GiB on one {per_gpu:.0f} GiB GPU "
                                    f"({self.hw.usable:.0%} usable){': ' + fix_memory if fix_memory else ''}")
        elif row.gpu_gib is not None and row.gpu_budget_gib is None:
            row.problems.append("runs on a GPU (device: cuda) but the profile gives it no `gpu`: "
                                f"set set-resources.{row.rule}.gpu: 1 in the profile")
        if row.host_budget_gib is not None and row.host_gib > row.host_budget_gib:
            row.problems.append(f"needs ~{row.host_gib:.0f} GiB of host memory, the profile gives "
                                f"{row.host_budget_gib:.0f}: raise set-resources.{row.rule}.mem_mb")
        if row.runtime_budget_h is not None and row.hours > row.runtime_budget_h:
            row.problems.append(f"needs ~{row.hours:.1f} h, the profile gives {row.runtime_budget_h:.0f} h"
                                f"{': ' + fix_time if fix_time else ''}")
        return row

    # -- expert features
    def expert_features(self, family: str) -> Row:
        rule = "expert_features"
        gpus, gpu_budget, host_budget, runtime = self.budgets(rule)
        shapes = [self.shape(family, e) for e in self.experts(family)]
        max_len = self.config["max_len"]
        mem = max((features_memory(s, self.dtype, FEATURE_MAX_TOKENS, max_len) for s in shapes), key=lambda e: e.peak)
        seqs = self._feature_sequences()
        tokens = seqs * self.mean_tokens()
        seconds = sum(tokens * (2 * s.matmul_params() + attention_flops(s, self.mean_tokens())) / self.hw.flops
                      + s.params() * DTYPE_BYTES[self.dtype] / (self.hw.load_gbps * GB) for s in shapes)
        split = max(1, gpus)
        hours = seconds / split / 3600
        host = self.train_host_gib(seqs, tokens * len(shapes), max(s.params() for s in shapes))
        row = Row(rule, family, f"{len(shapes)} experts, one at a time, {FEATURE_MAX_TOKENS} tokens/batch",
                  max(1, gpus), mem.gib(), gpu_budget, host, host_budget, hours,
                  runtime, seconds / 3600, phase=mem.phase, breakdown=mem.parts)
        need = math.ceil(seconds / 3600 / runtime) if runtime else 1
        return self._check(row, fix_time=f"give it gpu: {need} in the profile (the shards are split over the "
                                         f"visible GPUs) or raise set-resources.{rule}.runtime to "
                                         f"{math.ceil(hours * 60 * 1.2)}")

    def _feature_sequences(self) -> float:
        data = self.config.get("training_data") or {}
        sft = (data.get("sft") or {}).get("n") or self.config["fusionroute"]["sft"]["batch_size"] * \
            self.config["fusionroute"]["sft"]["steps"]
        mix = (data.get("sft") or {}).get("mix_n") or 0
        pref = (data.get("preferences") or {}).get("n") or self.config["fusionroute"]["mix"]["n_pref"]
        return sft + mix + 2 * pref

    # -- training
    def train_row(self, rule: str, family: str, block: str, phase: str) -> Row:
        gpus, gpu_budget, host_budget, runtime = self.budgets(rule)
        init = self.config["families"][family]["router_init"] if rule != "reward_model" else "base"
        shape = self.shape(family, init)
        if rule == "reward_model":  # a sequence classifier on the base: no [tokens, vocab] logits
            shape = replace(shape, lm_head=False)
        optim = dict(self.config[block][phase])
        if rule == "reward_model":
            optim = dict(self.config["reward_model"]["train"])
        settings = training_settings(self.config, family)
        lora, _ = resolve_lora(settings, shape.params())
        processes = int(settings.get("num_processes", 1)) if settings.get("launcher") == "accelerate" else 1
        router = len(self.experts(family)) if rule.startswith("router") else 0
        is_mix = phase == "mix"
        setting = self._train_setting(optim, settings, lora, router, is_mix, processes)
        mem = train_memory(shape, setting)
        phases = {"training": mem}
        if is_mix:
            ref_rows, ref_len = self._reference_rows(optim)
            phases["reference pass"] = reference_pass_memory(shape, ref_rows, ref_len, self.dtype, bool(router))
        worst_name = max(phases, key=lambda k: phases[k].peak)
        worst = phases[worst_name]
        # time
        mean = self.mean_tokens()
        rows_per_sample = 1.0
        if is_mix:
            n_sft, n_pref = optim["n_sft"], optim["n_pref"]
            rows_per_sample = (n_sft + 2 * n_pref) / (n_sft + n_pref)
        tokens = optim["steps"] * optim["batch_size"] * rows_per_sample * mean
        flops = train_flops(shape, tokens, mean, bool(lora), bool(settings.get("gradient_checkpointing")))
        if is_mix:
            flops += 2 * optim["n_pref"] * mean * (2 * shape.matmul_params() + attention_flops(shape, mean))
        load = shape.params() * DTYPE_BYTES[self.dtype] * (2 if is_mix else 1) / (self.hw.load_gbps * GB)
        seconds = flops / self.hw.flops / processes + load
        hours = seconds / 3600
        n_samples = optim["steps"] * optim["batch_size"]
        host = self.train_host_gib(n_samples * rows_per_sample, n_samples * mean * len(self.experts(family))
                                   if router else 0, shape.params())
        how = f"LoRA r={lora['r']}" if lora else "full"
        how += ", checkpointing" if settings.get("gradient_checkpointing") else ""
        how += f", {setting.rows}x{setting.seq_len} tokens/micro-batch"
        if processes > 1:
            how += f", FSDP x{processes}"
        label = worst_name if is_mix else ""
        row = Row(rule, family, how, max(1, gpus), worst.gib(), gpu_budget, host,
                  host_budget, hours, runtime, hours * processes,
                  phase=f"{label}: {worst.phase}" if label else worst.phase, breakdown=worst.parts)
        if gpu_budget is not None and self.device != "cpu":
            per_gpu = self.usable(gpu_budget / max(1, gpus))
            for name, est in phases.items():
                if est.gib() > per_gpu:
                    fix = self._train_fix(rule, family, block, phase, shape, optim, settings, lora, router, is_mix,
                                          name)
                    what = "its reference pass" if name == "reference pass" else "a training micro-batch"
                    row.problems.append(f"{what} needs ~{est.gib():.0f} GiB on one "
                                        f"{gpu_budget / max(1, gpus):.0f} GiB GPU ({self.hw.usable:.0%} usable)"
                                        f"{': ' + fix if fix else ''}")
        need = math.ceil(hours / runtime) if runtime else 1
        fix_time = (f"raise set-resources.{rule}.runtime to {math.ceil(hours * 60 * 1.2)} (the step resumes from its "
                    f"checkpoints), or train on {max(2, need)} GPUs: training.launcher: accelerate, num_processes: "
                    f"{max(2, need)}, lora: null, and gpu: {max(2, need)} for {rule} in the profile")
        return self._check(row, fix_time=fix_time, check_memory=False)

    def _train_setting(self, optim: dict, settings: dict, lora, router: int, is_mix: bool,
                       processes: int) -> TrainSetting:
        max_len = self.config["max_len"]
        micro = int(optim.get("micro_batch_size") or optim["batch_size"])
        rows = 2 * micro if is_mix else micro
        budget = int(optim.get("max_tokens_per_micro_batch") or 0)
        seq = max_len
        if budget and rows * max_len > budget:  # the largest piece: as many longest rows as fit (a pair: 2 rows)
            rows = max(2 if is_mix else 1, budget // max_len)
        return TrainSetting(dtype=self.dtype, lora=lora,
                            gradient_checkpointing=bool(settings.get("gradient_checkpointing")),
                            rows=rows, seq_len=seq, router_experts=router,
                            foreach=self.device != "cpu", processes=processes)

    def _reference_rows(self, optim: dict) -> tuple[int, int]:
        max_len = self.config["max_len"]
        pairs = int(optim.get("reference_batch_size", REFERENCE_BATCH_SIZE))
        budget = int(optim.get("max_tokens_per_micro_batch") or 0)
        if budget:
            pairs = max(1, min(pairs, budget // (2 * max_len)))
        return 2 * pairs, max_len

    def _train_fix(self, rule, family, block, phase, shape, optim, settings, lora, router, is_mix, worst_name) -> str:
        """The changes that make the rule fit, by the same formulas."""
        limit = self.usable(self.hw.gpu_mem_gib)
        key = f"{block}.{phase}" if block != "reward_model" else "reward_model.train"
        processes = int(settings.get("num_processes", 1)) if settings.get("launcher") == "accelerate" else 1
        options = []
        if worst_name == "reference pass":
            for pairs in (8, 4, 2, 1):
                est = reference_pass_memory(shape, 2 * pairs, self.config["max_len"], self.dtype, bool(router))
                if est.gib() <= limit:
                    options.append(f"set {key}.reference_batch_size: {pairs} (pairs per reference forward; "
                                   f"~{est.gib():.0f} GiB)")
                    break
            return " or ".join(options)
        micro = int(optim.get("micro_batch_size") or optim["batch_size"])
        m = micro
        while m > 1:
            m //= 2
            est = train_memory(shape, self._train_setting({**optim, "micro_batch_size": m}, settings, lora, router,
                                                          is_mix, processes))
            if est.gib() <= limit:
                options.append(f"set {key}.micro_batch_size: {m} (~{est.gib():.0f} GiB)")
                break
        if lora is None:
            candidate = dict(AUTO_LORA)
            est = train_memory(shape, self._train_setting(optim, settings, candidate, router, is_mix, 1))
            if est.gib() <= limit:
                options.append(f"set families.{family}.training.lora (e.g. {{r: {candidate['r']}, alpha: "
                               f"{candidate.get('alpha', 2 * candidate['r'])}}}; ~{est.gib():.0f} GiB)")
        for n in (2, 4, 8):
            if n <= processes:
                continue
            est = train_memory(shape, self._train_setting(optim, {**settings, "launcher": "accelerate"}, None,
                                                          router, is_mix, n))
            if est.gib() <= limit:
                full = "" if lora is None else f", families.{family}.training.lora: null"
                options.append(f"training.num_processes: {n} with launcher: accelerate{full} (FSDP; gpu: {n} for "
                               f"{rule} in the profile; ~{est.gib():.0f} GiB per GPU)")
                break
        if not settings.get("gradient_checkpointing"):
            est = train_memory(shape, replace(self._train_setting(optim, settings, lora, router, is_mix, processes),
                                              gradient_checkpointing=True))
            if est.gib() <= limit:
                options.insert(0, f"set training.gradient_checkpointing: true (~{est.gib():.0f} GiB)")
        return " or ".join(options)

    # -- generation
    def generate_rows(self, family: str) -> list[Row]:
        rule = "generate"
        gpus, gpu_budget, host_budget, runtime = self.budgets(rule)
        gen = self.config["generation"]
        catalog = self._methods(family)
        rows = []
        for name, spec in catalog.items():
            models = self._method_models(family, spec)
            params = spec.get("params", {})
            top_k = int(params.get("top_k", self.config.get("collab", {}).get("top_k", 2)))
            look = int(params.get("lookahead", self.config.get("collab", {}).get("lookahead", 0)))
            cells = self._cells(family, name, spec["kind"])
            if not cells:
                continue
            longest_new = max(c[2] for c in cells)
            s = DecodeSetting(spec["kind"], int(gen["batch_size"]), self.assume.prompt_tokens, longest_new,
                              self.dtype, top_k, look)
            mem = decode_memory(models, s)
            worst_cell, worst_hours, total_hours = None, 0.0, 0.0
            load = sum(m.params() for m in models.values()) * DTYPE_BYTES[self.dtype] / (self.hw.load_gbps * GB)
            for bench, n, new in cells:
                batches = math.ceil(n / s.rows)
                secs = batches * decode_batch_seconds(models, replace(s, max_new=new), self.hw,
                                                      self.assume.mean_prompt_tokens, new) + load
                total_hours += secs / 3600
                if secs / 3600 > worst_hours:
                    worst_cell, worst_hours = (bench, n, new), secs / 3600
            biggest = max(m.params() for m in models.values())
            host = (self.hw.host_base_gib * GIB + biggest * DTYPE_BYTES[self.dtype]) / GIB
            what = f"{spec['kind']}: " + ", ".join(sorted({r.split(':')[0] for r in models})) + \
                f"; {len(cells)} cells, worst {worst_cell[0]} ({worst_cell[1]} x {worst_cell[2]} tokens)"
            row = Row(rule, family, f"{name} [{what}]", max(1, gpus), mem.gib(),
                      gpu_budget, host, host_budget, worst_hours, runtime, total_hours, jobs=len(cells),
                      phase=mem.phase, breakdown=mem.parts)
            fix = ""
            limit = self.usable(self.hw.gpu_mem_gib)
            for b in (8, 4, 2, 1):
                if b >= s.rows:
                    continue
                est = decode_memory(models, replace(s, rows=b))
                if est.gib() <= limit:
                    fix = f"set generation.batch_size: {b} (~{est.gib():.0f} GiB)"
                    break
            fits_prompt = self._longest_prompt(models, s, limit)
            if fits_prompt is not None and fits_prompt < s.prompt:
                fix += (" or " if fix else "") + f"keep prompts under {fits_prompt} tokens"
            fix_time = self._generate_time_fix(family, name, spec, s, models, runtime, cells, load)
            row = self._check(row, fix_memory=fix, fix_time=fix_time)
            row.notes["longest prompt that fits at this batch size (tokens)"] = fits_prompt or 0
            rows.append(row)
        return rows

    def _longest_prompt(self, models, s: DecodeSetting, limit_gib: float) -> int | None:
        lo, hi = 0, 1 << 16
        if decode_memory(models, replace(s, prompt=1)).gib() > limit_gib:
            return None
        while hi - lo > 16:
            mid = (lo + hi) // 2
            if decode_memory(models, replace(s, prompt=mid)).gib() <= limit_gib:
                lo = mid
            else:
                hi = mid
        return lo

    def _generate_time_fix(self, family, name, spec, s, models, runtime, cells, load) -> str:
        if runtime is None:
            return ""
        bench, n, new = max(cells, key=lambda c: c[1] * c[2])
        per = decode_batch_seconds(models, replace(s, max_new=new), self.hw, self.assume.mean_prompt_tokens, new)
        fit = int(max(0, (runtime * 3600 - load)) / per) * s.rows
        fit = max(s.rows, fit - fit % s.rows)
        hours = math.ceil(n / s.rows) * per / 3600 + load / 3600
        if spec["kind"] == "collab":
            return (f"set collab.limit: {fit} (or benchmarks.<name>.limit_collab; the caption states it) or raise "
                    f"set-resources.generate.runtime to {math.ceil(hours * 60 * 1.2)}")
        return f"raise set-resources.generate.runtime to {math.ceil(hours * 60 * 1.2)} (generation resumes)"

    def _methods(self, family: str) -> dict[str, dict]:
        """The methods some target generates (tables and judge figures), with their kind/models/params."""
        names = list(dict.fromkeys(self.config["tables"]["table1"] + self.config["tables"]["table2"]))
        judge = self.config.get("judge") or {}
        figures = judge.get("figures") or {}
        extra = [m for fig in figures.values() for m in fig] + ([judge["against"]] if judge.get("against") else [])
        names += [m for m in extra if m not in names]
        catalog = family_methods(load_catalog(extra_kinds=self.config.get("method_kinds")), self.config, family)
        return {n: catalog[n] for n in names if n in catalog}

    def _method_models(self, family: str, spec: dict) -> dict[str, ModelShape]:
        init = self.config["families"][family]["router_init"]
        out: dict[str, ModelShape] = {}
        for key, ref in spec["models"].items():
            if ref == "experts":
                for e in self.experts(family):
                    out[f"expert:{e}"] = self.shape(family, e)
            elif ref == "reward_model":
                out["reward"] = self.shape(family, "reward_model")
            elif ref in ("router", "router_sft", "finetuned", "finetuned_sft") or ref.startswith("merge:"):
                out["router" if key == "router" else "model"] = self.shape(family, init)
            else:
                out["router" if key == "router" else "model"] = self.shape(family, ref)
        return out

    def _cells(self, family: str, name: str, kind: str) -> list[tuple[str, int, int]]:
        gen = self.config["generation"]
        cells = []
        in_tables = name in self.config["tables"]["table1"] or name in self.config["tables"]["table2"]
        if in_tables:
            for bench, spec in self.config["benchmarks"].items():
                n = int(spec["n"])
                if kind == "collab":
                    limit = spec.get("limit_collab") or (self.config.get("collab") or {}).get("limit") or 0
                    n = min(n, limit) if limit else n
                cells.append((bench, n, int(spec.get("max_new_tokens", gen["max_new_tokens"]))))
        judge = self.config.get("judge") or {}
        judged = {m for fig in (judge.get("figures") or {}).values() for m in fig} | {judge.get("against")}
        if name in judged and judge.get("general"):
            general = judge["general"]
            n = int(general["n"])
            if kind == "collab":
                limit = general.get("limit_collab") or (self.config.get("collab") or {}).get("limit") or 0
                n = min(n, limit) if limit else n
            cells.append(("general", n, int(general.get("max_new_tokens", gen["max_new_tokens"]))))
        return cells

    # -- merge (CPU)
    def merge_row(self, family: str) -> Row:
        rule = "merge"
        gpus, gpu_budget, host_budget, runtime = self.budgets(rule)
        shapes = [self.shape(family, "base")] + [self.shape(family, e) for e in self.experts(family)]
        b = DTYPE_BYTES[self.dtype]
        biggest = max(s.largest_matrix() for s in shapes)
        shard = min(5e9, shapes[0].params())  # mergekit's output shard (5B parameters by default)
        host = (self.hw.host_base_gib * GIB + len(shapes) * biggest * 4 * 2 + shard * b) / GIB  # fp32 math
        read = sum(s.params() for s in shapes) * b + shapes[0].params() * b
        hours = read / (0.2 * GB) / 3600
        row = Row(rule, family, f"mergekit on the CPU, {len(shapes)} models (2 merges)", 0, None, None, host,
                  host_budget, hours, runtime, 0.0, jobs=2)
        return self._check(row)


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[Row], hw: Hardware) -> str:
    head = ("| rule | family | setting | peak GiB per GPU | GPUs x GiB given | host GiB (given) | hours/job (given) "
            "| GPU-hours | fits |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        gpu = _fmt(r.gpu_gib, ".1f")
        given = "-" if r.gpu_budget_gib is None else f"{r.gpus} x {r.gpu_budget_gib / max(1, r.gpus):.0f}"
        host = f"{r.host_gib:.0f} ({_fmt(r.host_budget_gib)})"
        hours = f"{r.hours:.1f} ({_fmt(r.runtime_budget_h)})"
        jobs = f" ({r.jobs} jobs)" if r.jobs > 1 else ""
        lines.append(f"| {r.rule} | {r.family} | {r.what} | {gpu} | {given} | {host} | {hours} | "
                     f"{r.gpu_hours:.1f}{jobs} | {'yes' if r.fits else 'NO'} |")
    return "\n".join(lines)


def report(planner: Planner, rows: list[Row]) -> str:
    hw, a = planner.hw, planner.assume
    out = [f"# Plan: world {planner.config['world']} ({planner.dtype}, device {planner.device})", ""]
    out.append(f"GPU: {hw.gpu_mem_gib:.0f} GiB per `gpu` unit, {hw.usable:.0%} usable; {hw.peak_tflops:.0f} TFLOP/s "
               f"x {hw.mfu:.0%} sustained; {hw.hbm_tbps} TB/s x {hw.bw_efficiency:.0%} for decoding; "
               f"{hw.call_overhead_ms} ms per layer and call. Training tokens: mean {planner.mean_tokens():.0f} per "
               f"sequence ({a.train_tokens_source}), memory at max_len {planner.config['max_len']}; prompts: "
               f"<= {a.prompt_tokens} tokens (mean {a.mean_prompt_tokens:.0f}).")
    if planner.device == "cpu":
        out.append("device: cpu - the memory column is the step's memory on the CPU (not checked against a GPU); "
                   "the hours assume the GPU above.")
    out += ["", "Model shapes:", ""]
    seen = {}
    for key, s in planner.shapes.items():
        seen.setdefault(s.name, (s, []))[1].append(key.split(":", 1)[0])
    for name, (s, fams) in seen.items():
        size = f"{s.params() / 1e9:.2f}B" if s.params() >= 1e8 else f"{s.params() / 1e6:.2f}M"
        out.append(f"- {name}: {size} parameters, hidden {s.hidden}, {s.layers} layers, "
                   f"{s.heads}/{s.kv_heads} heads x {s.head_dim}, intermediate {s.intermediate}, vocab {s.vocab}"
                   f"{', tied' if s.tied else ''}{'' if s.lm_head else ', classifier'} - from {s.source}")
    out += ["", table(rows, hw), ""]
    bad = [r for r in rows if not r.fits]
    if bad:
        out.append("Does not fit:")
        out += [f"- {r.label}: " + "; ".join(r.problems) for r in bad]
    else:
        out.append("Every rule fits its profile resources.")
    return "\n".join(out) + "\n"


def mean_train_tokens_from_data(world: str) -> float | None:
    """Mean characters / 4 of the world's training files, when they exist."""
    data = Path("build") / world / "data"
    total = count = 0
    for name in ("sft_mix.jsonl", "preferences.jsonl"):
        path = data / name
        if not path.exists():
            continue
        with open(path) as handle:
            for line in handle:
                r = json.loads(line)
                text = r.get("instruction", "") + (r.get("response") or r.get("chosen") or "")
                total += len(text)
                count += 1
    return total / 4 / count if count else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", nargs="+", required=True, help="the workflow's config file(s), later ones on top")
    p.add_argument("--profile", default="profiles/slurm", help="Snakemake profile directory (or its config.yaml) "
                   "whose set-resources give each rule's gpu, mem_mb, runtime; '' = none")
    p.add_argument("--markdown", help="also write the report here")
    p.add_argument("--json", help="also write every row (with the memory breakdown) here")
    p.add_argument("--model-config", action="append", default=[], metavar="SOURCE=DIR",
                   help="take the shape of model SOURCE from DIR/config.json")
    hw = Hardware()
    for knob in fields(Hardware):
        p.add_argument("--" + knob.name.replace("_", "-"), type=float, default=knob.default, help=knob.metadata["help"])
    a = Assumptions()
    p.add_argument("--mean-train-tokens", type=float, default=None,
                   help=f"mean training sequence (default: from build/<world>/data, else {a.mean_train_tokens:.0f})")
    p.add_argument("--prompt-tokens", type=int, default=None,
                   help="longest prompt of a decoding batch (default: generation.max_prompt_tokens, else "
                        f"{a.prompt_tokens} or max_len if smaller)")
    p.add_argument("--mean-prompt-tokens", type=float, default=a.mean_prompt_tokens)
    p.add_argument("--no-fail", action="store_true", help="exit 0 even when a rule does not fit")
    args = p.parse_args(argv)

    config = load_config(args.configfile)
    hardware = Hardware(**{k: getattr(args, k) for k in asdict(hw)})
    configured = config["generation"].get("max_prompt_tokens")
    if args.prompt_tokens is not None:
        prompt = args.prompt_tokens
    elif configured:  # the generate step cuts longer prompts to this
        prompt = int(configured)
    else:
        prompt = min(1024, int(config["max_len"]))
    assume = Assumptions(prompt_tokens=prompt, mean_prompt_tokens=min(args.mean_prompt_tokens, prompt))
    if args.mean_train_tokens:
        assume.mean_train_tokens, assume.train_tokens_source = args.mean_train_tokens, "--mean-train-tokens"
    else:
        measured = mean_train_tokens_from_data(config["world"])
        if measured:
            assume.mean_train_tokens = measured
            assume.train_tokens_source = f"build/{config['world']}/data: mean characters / 4"
        else:
            assume.train_tokens_source = "assumed; no build/<world>/data yet"
    overrides = dict(item.split("=", 1) for item in args.model_config)
    planner = Planner(config, load_profile(args.profile), hardware, assume, overrides)
    rows = planner.rows()
    text = report(planner, rows)
    print(text, end="")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"world": config["world"], "hardware": asdict(hardware), "assumptions": asdict(assume),
                   "shapes": {k: asdict(v) for k, v in planner.shapes.items()},
                   "rows": [{**asdict(r), "fits": r.fits} for r in rows]}
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    bad = [r for r in rows if not r.fits]
    for r in bad:
        print(f"[plan] {r.label}: " + "; ".join(r.problems), file=sys.stderr)
    return 0 if args.no_fail or not bad else 1


if __name__ == "__main__":
    sys.exit(main())

"""Settings and names of the rehearsal hub (no heavy imports: checking a finished hub is instant)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# config/paper.yaml's prompt_template (the MergeBench experts' Alpaca format)
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")

LLAMA_INSTRUCT = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_EXPERTS = {"math": "MergeBench/Llama-3.1-8B-Instruct_math", "coding": "MergeBench/Llama-3.1-8B-Instruct_coding"}
GEMMA_INSTRUCT = "google/gemma-2-2b-it"
GEMMA_EXPERTS = {"math": "MergeBench/gemma-2-2b-it_math", "coding": "MergeBench/gemma-2-2b-it_coding",
                 "instruction": "MergeBench/gemma-2-2b-it_instruction"}
MISTRAL_RM = "Ray2333/reward-model-Mistral-7B-instruct-Unified-Feedback"
GEMMA_RM = "weqweasdas/RM-Gemma-2B"


@dataclass(frozen=True)
class Shape:
    """Transformer size shared by every stand-in (the Hugging Face config's hidden_size, num_hidden_layers,
    intermediate_size, num_attention_heads, num_key_value_heads, head_dim)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 4
    max_len: int = 256
    loss_on_prompt: bool = False  # True for the from-scratch instruct models: more signal per step


@dataclass(frozen=True)
class RehearsalSettings:
    # GQA: 4 query heads over 2 key/value heads
    shape: Shape = Shape(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, head_dim=16)
    llama_regular_vocab: int = 1008   # + Llama-3's 16-token special block = 1024 ids
    gemma_vocab: int = 1000
    mistral_rm_vocab: int = 800       # the reward models' vocabularies differ from the policies'
    gemma_rm_vocab: int = 768
    appended_pad: str = "[PAD]"       # the coding experts' recipe pad token (not in any vocabulary)
    # from scratch: a high rate and the loss on the whole text (prompt template included). Gemma's
    # SentencePiece-style text ("▁" tokens, single digits) needs about twice the steps to stop
    # emitting only its most frequent tokens.
    llama_instruct_sft: TrainSettings = TrainSettings(steps=40, batch_size=16, lr=1e-2, loss_on_prompt=True)
    gemma_instruct_sft: TrainSettings = TrainSettings(steps=80, batch_size=16, lr=1e-2, loss_on_prompt=True)
    # experts: one epoch of their domain at a low rate, so task vectors are small deltas
    expert_sft: TrainSettings = TrainSettings(steps=16, batch_size=16, lr=1e-3)
    reward: TrainSettings = TrainSettings(steps=12, batch_size=8, lr=5e-3)
    instruct_items_per_domain: int = 96
    expert_items: int = 256
    rm_pairs: int = 128
    perfectblend_rows: int = 700
    openhermes_rows: int = 300
    benchmark_rows: int = 60
    save_dtype: str = "bfloat16"      # as published; training runs in float32
    threads: int = 1                  # one thread: float sums (and so the bytes) do not depend on the machine
    # processes for the model parts: 1 = all in this process (least CPU in total, best on a busy
    # machine); 2 = Gemma-2 beside Llama-3 + reward models (~30% less wall time on 2 idle cores)
    workers: int = 1

    def fingerprint(self) -> str:
        """Hash of every setting that changes the output (`workers` only changes the wall time)."""
        fields = {k: v for k, v in asdict(self).items() if k != "workers"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

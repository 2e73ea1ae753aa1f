"""Tiny stand-ins for the paper's checkpoints: hub-shaped configs, a short seeded training loop,
and saving in the hub layout (safetensors + config + generation_config + tokenizer files).

The architectures keep every feature the pipeline has to cope with in the real models (Llama-3.1:
GQA, llama3 RoPE scaling, untied head, several eos ids; Gemma-2: sliding-window layers, logit
soft-capping, tied embeddings, `query_pre_attn_scalar`; reward models: another architecture and
vocabulary with a scalar head) at a size that trains in seconds on a CPU.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GemmaConfig,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fusionroute.data import IGNORE, Encoded, collate, encode_pair, render_prompt
from fusionroute.rehearsal.settings import Shape, TrainSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
def llama31_config(shape: Shape, vocab_size: int, bos: int, eos: list[int]) -> LlamaConfig:
    # transformers 5 spells Llama-3.1's `rope_scaling` + `rope_theta` as one `rope_parameters`
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return LlamaConfig(vocab_size=vocab_size, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                       num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                       num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, max_position_embeddings=131072,
                       rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=False, bos_token_id=bos,
                       eos_token_id=list(eos), pad_token_id=None, hidden_act="silu")


def gemma2_config(shape: Shape, vocab_size: int, pad: int, bos: int, eos: list[int],
                  sliding_window: int = 256) -> Gemma2Config:
    return Gemma2Config(vocab_size=vocab_size, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                        num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
                        query_pre_attn_scalar=shape.head_dim, sliding_window=sliding_window,
                        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                                     for i in range(shape.layers)],
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, tie_word_embeddings=True,
                        max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                        hidden_activation="gelu_pytorch_tanh", pad_token_id=pad, bos_token_id=bos,
                        eos_token_id=list(eos))


def mistral_rm_config(shape: Shape, vocab_size: int, pad: int, bos: int, eos: int) -> MistralConfig:
    return MistralConfig(vocab_size=vocab_size, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, max_position_embeddings=32768,
                         sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         tie_word_embeddings=False, num_labels=1, pad_token_id=pad, bos_token_id=bos,
                         eos_token_id=eos)


def gemma_rm_config(shape: Shape, vocab_size: int, pad: int, bos: int, eos: int) -> GemmaConfig:
    # Gemma-1 2B uses multi-query attention (one key/value head)
    return GemmaConfig(vocab_size=vocab_size, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                       num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=1,
                       head_dim=shape.head_dim, max_position_embeddings=8192, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, num_labels=1,
                       pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)


def init_model(model_cls, config, seed: int) -> PreTrainedModel:
    """A freshly initialised model; the global torch RNG is seeded so the weights are reproducible."""
    torch.manual_seed(seed)
    return model_cls.from_config(config, dtype=torch.float32)


def load_float32(folder: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def sft_examples(tokenizer: PreTrainedTokenizerBase, items: Sequence[dict], template: str,
                 cfg: TrainSettings) -> list[Encoded]:
    """Alpaca-prompted (instruction, response) pairs, tokenised exactly as the project trains."""
    out = []
    for it in items:
        enc = encode_pair(tokenizer, render_prompt(template, it["instruction"]), it["response"], cfg.max_len)
        out.append(Encoded(enc.input_ids, list(enc.input_ids)) if cfg.loss_on_prompt else enc)
    return out


def _lr_at(step: int, cfg: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batches(lengths: Sequence[int], cfg: TrainSettings, seed: int, group: int = 8) -> list[list[int]]:
    """`steps` batches from seeded reshuffled epochs (never a partial batch). Each run of `group`
    batches is cut from length-sorted samples, so little compute goes to padding on a CPU."""
    rng, order, out = random.Random(seed), [], []
    while len(out) < cfg.steps:
        while len(order) < cfg.batch_size * group:
            fresh = list(range(len(lengths)))
            rng.shuffle(fresh)
            order += fresh
        chunk, order = sorted(order[:cfg.batch_size * group], key=lengths.__getitem__), order[cfg.batch_size * group:]
        cut = [chunk[i:i + cfg.batch_size] for i in range(0, len(chunk), cfg.batch_size)]
        rng.shuffle(cut)
        out += cut
    return out[:cfg.steps]


def _optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                             weight_decay=0.0, foreach=False)


def _train(model: PreTrainedModel, lengths: Sequence[int], batch_loss: Callable[[list[int]], torch.Tensor],
           cfg: TrainSettings, seed: int) -> list[float]:
    """`cfg.steps` AdamW steps (warm-up + cosine rate, gradients clipped to norm 1) on the loss of each
    batch of sample indices; returns the loss of every step."""
    model.train()
    opt, losses = _optimizer(model, cfg.lr), []
    for step, batch_ids in enumerate(_batches(lengths, cfg, seed)):
        loss = batch_loss(batch_ids)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def train_causal_lm(model: PreTrainedModel, examples: Sequence[Encoded], pad_id: int, cfg: TrainSettings,
                    seed: int) -> list[float]:
    """Plain next-token training on the labelled positions; returns the loss of every step."""
    def batch_loss(batch_ids: list[int]) -> torch.Tensor:
        batch = collate([examples[i] for i in batch_ids], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
                               ignore_index=IGNORE)

    return _train(model, [len(e.input_ids) for e in examples], batch_loss, cfg, seed)


def _rm_ids(tokenizer: PreTrainedTokenizerBase, instruction: str, response: str, max_len: int) -> list[int]:
    # The reward models score a chat-formatted exchange (their own template, which writes the bos)
    text = tokenizer.apply_chat_template([{"role": "user", "content": instruction},
                                          {"role": "assistant", "content": response}], tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"][-max_len:]


def train_reward_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[dict],
                       cfg: TrainSettings, seed: int) -> list[float]:
    """A few Bradley-Terry steps (-log sigmoid(r_chosen - r_rejected)), so chosen tends to score higher."""
    pad = int(model.config.pad_token_id)
    encoded = [(_rm_ids(tokenizer, p["instruction"], p["chosen"], cfg.max_len),
                _rm_ids(tokenizer, p["instruction"], p["rejected"], cfg.max_len)) for p in pairs]

    def batch_loss(batch_ids: list[int]) -> torch.Tensor:
        seqs = [Encoded(ids, ids) for i in batch_ids for ids in encoded[i]]  # chosen, rejected, chosen, ...
        batch = collate(seqs, pad)
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        return -F.logsigmoid(rewards[0::2] - rewards[1::2]).mean()

    return _train(model, [len(c) + len(r) for c, r in encoded], batch_loss, cfg, seed)


# ----------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------
def append_pad_row(model: PreTrainedModel, new_vocab: int, pad_id: int, seed: int) -> None:
    """Grow embeddings and output layer to `new_vocab` rows as a fine-tuning recipe does
    (transformers' mean resizing samples the new rows, hence the seed)."""
    torch.manual_seed(seed)
    model.resize_token_embeddings(new_vocab, mean_resizing=True)
    model.config.pad_token_id = pad_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = pad_id


def save_model(model: PreTrainedModel, folder: Path, dtype: str,
               generation: GenerationConfig | None = None) -> None:
    """safetensors weights in `dtype` (the hub checkpoints are bf16) + config (+ generation_config).
    The model is left in `dtype`; fine-tunes reload the saved folder, as a real recipe starts from
    the published bf16 checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    if generation is not None:
        model.generation_config = generation
    model.to(DTYPES[dtype])
    model.save_pretrained(str(folder))

"""Helpers shared by the baseline tests (tiny tokenizer, tiny Llamas, a greedy stand-in)."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig

CORPUS = [
    "Below is an instruction. Write a response.\n### Instruction:\nAdd 3 and 4.\n\n### Response:\nThe answer is: 7",
    "def add(a, b):\n    return a + b\n",
    "the cat sat on the mat and the dog ran to the park 0123456789",
    "Write a short poem about the sea. The sea is blue and wide.",
] * 20


def build_tokenizer(out_dir: Path):
    from fusionroute.tiny.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size=300, out_dir=out_dir)


def tiny_llama_config(tokenizer, hidden: int = 32, layers: int = 2, **kw) -> LlamaConfig:
    base = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    base.update(kw)
    return LlamaConfig(**base)


def save_model(model, tokenizer, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


def token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is not a single token: {ids}"
    return ids[0]


def density_reward_model(tokenizer, rewarded: str = "7"):
    """A real 1-layer LlamaForSequenceClassification whose reward is KNOWN:
    r = 8f / sqrt(1 + 8f^2), f = share of the scored sequence's tokens equal to `rewarded`.

    One-hot embeddings (dim 1 for the rewarded token, dim 0 for all others), zero query/key (uniform
    causal attention), value copies dim 1 to dim 2, MLP off, head reads dim 2 after the final norm.
    """
    from transformers import LlamaForSequenceClassification

    d = 8
    cfg = tiny_llama_config(tokenizer, hidden=d, layers=1, num_attention_heads=1, num_key_value_heads=1,
                            intermediate_size=8, num_labels=1, head_dim=d)
    model = LlamaForSequenceClassification(cfg)
    target = token_id(tokenizer, rewarded)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0
        emb[target] = 0.0
        emb[target, 1] = 1.0
        layer = model.model.layers[0]
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        layer.self_attn.v_proj.weight[2, 1] = 1.0
        layer.self_attn.o_proj.weight.copy_(torch.eye(d))
        model.score.weight[0, 2] = 1.0
    return model.eval()


def density_reward(f: float) -> float:
    return 8 * f / (1 + 8 * f * f) ** 0.5


def bigram_expert(tokenizer, table: dict, seed: int = 0):
    """A real 1-layer LlamaForCausalLM that is an exact bigram model: logits(next | current token).

    `table` maps a current-token string (or "*" for every other token) to {next-token string or
    "</s>": logit}; unlisted next tokens get logit ~0 (tiny noise breaks ties). Attention and MLP
    outputs are zeroed, so the residual stream is the current token's one-hot class embedding.
    """
    classes = ["*"] + [k for k in table if k != "*"]
    d = max(4, len(classes))
    cfg = tiny_llama_config(tokenizer, hidden=d, layers=1, num_attention_heads=1, num_key_value_heads=1,
                            intermediate_size=4, head_dim=d)
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)

    def tid(s):
        return tokenizer.eos_token_id if s == "</s>" else token_id(tokenizer, s)

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 1.0
        for c, name in enumerate(classes[1:], start=1):
            emb[tid(name)] = 0.0
            emb[tid(name), c] = 1.0
        head = model.lm_head.weight
        head.copy_(torch.randn_like(head) * 1e-3)
        for c, name in enumerate(classes):
            for nxt, logit in table.get(name, {}).items():
                head[tid(nxt), c] = logit / d ** 0.5  # the final norm scales the one-hot by sqrt(d)
    return model.eval()

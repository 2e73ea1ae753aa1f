"""Workflow steps of workflow/rules/tiny.smk: the tiny world's data, tokenizer and base model
(its generalist and experts are `finetune_lm` runs, in fusionroute/steps/train.py)."""
from __future__ import annotations

from fusionroute.io import read_jsonl, write_jsonl
from fusionroute.steps import step
from fusionroute.steps.common import seed_everything


@step
def tiny_data(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """All synthetic training sets of the tiny world (the benchmarks come from `benchmark_data`)."""
    from fusionroute.tiny import tasks

    seed, sizes, level = params["seed"], params["sizes"], params.get("level")
    write_jsonl(outputs["pretrain"], [{"text": t} for t in tasks.make_pretraining_corpus(sizes["pretrain"], seed, level=level)])
    for domain in ("math", "code", "instruct"):
        write_jsonl(outputs[f"sft_{domain}"], tasks.make_sft(domain, sizes["expert_sft"], seed + 1, level=level))
    write_jsonl(outputs["sft_mix"], tasks.make_sft_mix(sizes["sft_mix"], seed + 2, level=level))
    # the generalist instruct model's SFT data: the same balanced mix of every domain, drawn apart
    write_jsonl(outputs["sft_generalist"], tasks.make_sft_mix(sizes["generalist_sft"], seed + 4, level=level))
    write_jsonl(outputs["preferences"], tasks.make_preferences(sizes["preferences"], seed + 3, level=level))


@step
def tiny_tokenizer(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    from fusionroute.tiny.tokenizer import train_tokenizer

    texts = [row["text"] for row in read_jsonl(inputs["pretrain"])]
    for name in ("sft_math", "sft_code", "sft_instruct"):
        texts += [render_training_text(params["prompt_template"], r) for r in read_jsonl(inputs[name])]
    train_tokenizer(texts, params["vocab_size"], outputs["tokenizer"])


def render_training_text(template: str, record: dict) -> str:
    from fusionroute.data import render_prompt

    return render_prompt(template, record["instruction"]) + record["response"]


@step
def tiny_base(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Initialise a small LlamaForCausalLM and pretrain it briefly on the mixed corpus."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fusionroute.data import encode_text, pack_texts
    from fusionroute.models import load_tokenizer
    from fusionroute.trainers import train_lm
    from fusionroute.training import OptimConfig, write_log

    seed_everything(params["seed"])
    tokenizer = load_tokenizer(inputs["tokenizer"])
    arch = dict(params["architecture"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=params["max_positions"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **arch,
    )
    model = LlamaForCausalLM(config)
    texts = [row["text"] for row in read_jsonl(inputs["pretrain"])]
    encoded = pack_texts([encode_text(tokenizer, t, params["max_len"]) for t in texts], params["block_size"])
    cfg = OptimConfig.from_dict({**params["optim"], "seed": params["seed"]})
    log = train_lm(model, encoded, cfg, tokenizer.pad_token_id, "pretrain base").log
    model.save_pretrained(outputs["model"])
    tokenizer.save_pretrained(outputs["model"])
    write_log(outputs["log"], log, {"parameters": sum(p.numel() for p in model.parameters())})

# The tiny world: synthetic data, tokenizer, and the paper's model lineage at small scale, all built
# locally: a pretrained model -> a generalist instruct model (SFT on a mix of every domain; the
# family's `base`, as Llama-3.1-8B-Instruct is the paper's) -> three experts fine-tuned from it (as
# MergeBench's experts are from the instruct model). Merges take their task vectors over `base`.
TINY = config.get("tiny", {})


def expert_optim(expert):
    """The expert's training settings: `tiny.expert` with its `tiny.expert_overrides` on top."""
    return {**TINY.get("expert", {}), **TINY.get("expert_overrides", {}).get(expert, {})}


TINY_DATA = ["pretrain", "sft_generalist", "sft_math", "sft_code", "sft_instruct", "sft_mix", "preferences"]


rule tiny_data:
    output:
        **{name: f"{BUILD}/data/{name}.jsonl" for name in TINY_DATA},
    params:
        seed=SEED,
        sizes=TINY.get("sizes"),
        level=TINY.get("level"),
    log:
        f"logs/{WORLD}/tiny_data.log",
    benchmark:
        f"benchmarks/{WORLD}/tiny_data.tsv"
    script:
        "../scripts/step.py"


rule tiny_tokenizer:
    input:
        pretrain=f"{BUILD}/data/pretrain.jsonl",
        sft_math=f"{BUILD}/data/sft_math.jsonl",
        sft_code=f"{BUILD}/data/sft_code.jsonl",
        sft_instruct=f"{BUILD}/data/sft_instruct.jsonl",
    output:
        tokenizer=directory(f"{BUILD}/tokenizer"),
    params:
        vocab_size=TINY.get("vocab_size"),
        prompt_template=lambda w: config["prompt_template"],
    log:
        f"logs/{WORLD}/tiny_tokenizer.log",
    script:
        "../scripts/step.py"


rule tiny_base:
    input:
        tokenizer=f"{BUILD}/tokenizer",
        pretrain=f"{BUILD}/data/pretrain.jsonl",
    output:
        model=directory(f"{BUILD}/{{family}}/pretrained"),
        log=f"{BUILD}/{{family}}/logs/pretrained.json",
    params:
        common=lambda w: COMMON,
        architecture=TINY.get("architecture"),
        optim=TINY.get("pretrain"),
        block_size=TINY.get("block_size"),
        max_positions=config["max_len"] + config["generation"]["max_new_tokens"] + 64,
    threads: 256  # alone on the critical path: every core (Snakemake scales threads down to --cores)
    log:
        f"logs/{WORLD}/{{family}}/tiny_base.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/tiny_base.tsv"
    script:
        "../scripts/step.py"


rule tiny_generalist:
    input:
        pretrained=f"{BUILD}/{{family}}/pretrained",
        data=f"{BUILD}/data/sft_generalist.jsonl",
    output:
        model=directory(f"{BUILD}/{{family}}/base"),
        log=f"{BUILD}/{{family}}/logs/base.json",
    params:
        step="finetune_lm",
        common=lambda w: COMMON,
        models=lambda w: {"tokenizer": f"{BUILD}/tokenizer", "init": f"{BUILD}/{w.family}/pretrained"},
        optim=TINY.get("generalist"),
        desc="generalist instruct model",
    threads: 256  # alone on the critical path: every core (Snakemake scales threads down to --cores)
    log:
        f"logs/{WORLD}/{{family}}/tiny_generalist.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/tiny_generalist.tsv"
    script:
        "../scripts/step.py"


rule tiny_expert:
    input:
        base=f"{BUILD}/{{family}}/base",
        data=f"{BUILD}/data/sft_{{expert}}.jsonl",
    output:
        model=directory(f"{BUILD}/{{family}}/experts/{{expert}}"),
        log=f"{BUILD}/{{family}}/logs/expert_{{expert}}.json",
    params:
        step="finetune_lm",
        common=lambda w: COMMON,
        models=lambda w: {"tokenizer": f"{BUILD}/tokenizer", "init": f"{BUILD}/{w.family}/base"},
        optim=lambda w: expert_optim(w.expert),
        desc=lambda w: f"expert {w.expert}",
    threads: config["threads"]
    # longest first: the router's chain waits for every expert, so the slowest one must not queue
    # behind the others (Snakemake knows no durations; steps stand in for them)
    priority: lambda w: CRITICAL_PATH_PRIORITY + expert_optim(w.expert).get("steps", 0) / 1e6
    log:
        f"logs/{WORLD}/{{family}}/tiny_expert_{{expert}}.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/tiny_expert_{{expert}}.tsv"
    script:
        "../scripts/step.py"

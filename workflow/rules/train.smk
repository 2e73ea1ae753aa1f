# FusionRoute training (expert features, SFT with routing loss, mix training with CDPO) and the
# fine-tuned baseline, which shares the loop: LM-only SFT, then the same mix with plain DPO.
FR = config["fusionroute"]
FT = config["finetuned"]


rule expert_features:
    input:
        lambda w: model_inputs(w.family, {"experts": "experts"}),
        **FEATURE_SETS,
    output:
        **{name: f"{BUILD}/{{family}}/features/{name}.pt" for name in FEATURE_SETS},
    params:
        common=lambda w: COMMON,
        models=lambda w: models_param(w.family, {"experts": "experts"}),
        expert_names=lambda w: experts(w.family),
    threads: config["threads"]
    resources:
        gpu=lambda w: 0 if is_tiny(w.family) else 1,
    log:
        f"logs/{WORLD}/{{family}}/expert_features.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/expert_features.tsv"
    script:
        "../scripts/step.py"


rule router_sft:
    input:
        lambda w: model_inputs(w.family, {"init": FAMILIES[w.family]["router_init"]}),
        sft=SFT_DATA,
        features=f"{BUILD}/{{family}}/features/sft.pt",
    output:
        model=directory(f"{BUILD}/{{family}}/router_sft"),
        log=f"{BUILD}/{{family}}/logs/router_sft.json",
    params:
        common=lambda w: COMMON,
        scaling=lambda w: training_settings(w.family),
        models=lambda w: models_param(w.family, {"init": FAMILIES[w.family]["router_init"], "experts": "experts"}),
        expert_names=lambda w: experts(w.family),
        optim={k: v for k, v in FR["sft"].items() if k not in ("lam", "reading")},
        lam=FR["sft"]["lam"],
        reading=FR["sft"]["reading"],
    threads: config["threads"]
    resources:
        gpu=lambda w: 0 if is_tiny(w.family) else 1,
    log:
        f"logs/{WORLD}/{{family}}/router_sft.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/router_sft.tsv"
    script:
        "../scripts/step.py"


MIX_KEYS = ("lam", "beta", "n_sft", "n_pref", "reading")


rule router_mix:
    input:
        router_sft=f"{BUILD}/{{family}}/router_sft",
        sft=MIX_SFT_DATA,
        preferences=PREF_DATA,
        sft_features=f"{BUILD}/{{family}}/features/{MIX_FEATURES}.pt",
        pref_features=f"{BUILD}/{{family}}/features/preferences.pt",
    output:
        model=directory(f"{BUILD}/{{family}}/router"),
        log=f"{BUILD}/{{family}}/logs/router_mix.json",
    params:
        step="mix_train",
        common=lambda w: COMMON,
        scaling=lambda w: training_settings(w.family),
        policy="router",
        models=lambda w: models_param(w.family, {"init": "router_sft"}),
        optim={k: v for k, v in FR["mix"].items() if k not in MIX_KEYS},
        **{k: v for k, v in FR["mix"].items() if k in MIX_KEYS},
    threads: config["threads"]
    resources:
        gpu=lambda w: 0 if is_tiny(w.family) else 1,
    log:
        f"logs/{WORLD}/{{family}}/router_mix.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/router_mix.tsv"
    script:
        "../scripts/step.py"


rule finetuned_sft:
    input:
        lambda w: model_inputs(w.family, {"init": FAMILIES[w.family]["router_init"]}),
        data=SFT_DATA,
    output:
        model=directory(f"{BUILD}/{{family}}/finetuned_sft"),
        log=f"{BUILD}/{{family}}/logs/finetuned_sft.json",
    params:
        step="finetune_lm",
        common=lambda w: COMMON,
        scaling=lambda w: training_settings(w.family),
        models=lambda w: models_param(w.family, {"init": FAMILIES[w.family]["router_init"]}),
        optim=FT["sft"],
        desc="fine-tuned SFT",
    threads: config["threads"]
    resources:
        gpu=lambda w: 0 if is_tiny(w.family) else 1,
    log:
        f"logs/{WORLD}/{{family}}/finetuned_sft.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/finetuned_sft.tsv"
    script:
        "../scripts/step.py"


rule finetuned_mix:
    input:
        init=f"{BUILD}/{{family}}/finetuned_sft",
        sft=MIX_SFT_DATA,
        preferences=PREF_DATA,
    output:
        model=directory(f"{BUILD}/{{family}}/finetuned"),
        log=f"{BUILD}/{{family}}/logs/finetuned_mix.json",
    params:
        step="mix_train",
        common=lambda w: COMMON,
        scaling=lambda w: training_settings(w.family),
        policy="lm",
        models=lambda w: models_param(w.family, {"init": "finetuned_sft"}),
        optim={k: v for k, v in FT["mix"].items() if k not in MIX_KEYS},
        **{k: v for k, v in FT["mix"].items() if k in MIX_KEYS},
    threads: config["threads"]
    resources:
        gpu=lambda w: 0 if is_tiny(w.family) else 1,
    log:
        f"logs/{WORLD}/{{family}}/finetuned_mix.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/finetuned_mix.tsv"
    script:
        "../scripts/step.py"

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
    priority: CRITICAL_PATH_PRIORITY  # the longest chain of the build (expert -> features -> router)
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
        optim=lambda w: {k: v for k, v in stage(w, "router_sft", "sft").items() if k not in ("lam", "reading")},
        lam=lambda w: stage(w, "router_sft", "sft")["lam"],
        reading=lambda w: stage(w, "router_sft", "sft")["reading"],
    threads: config["threads"]
    priority: CRITICAL_PATH_PRIORITY  # the longest chain of the build (expert -> features -> router)
    resources:
        gpu=lambda w: 0 if is_tiny(w.family) else 1,
    log:
        f"logs/{WORLD}/{{family}}/router_sft.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/router_sft.tsv"
    script:
        "../scripts/step.py"


MIX_KEYS = ("lam", "beta", "n_sft", "n_pref", "reading")


def mix_params(ref, section):
    """A mix-training rule's params: the optimiser settings apart, each mix key its own param (so a
    change reruns exactly the jobs it affects), read for the job's model or sweep variant."""
    return {
        "optim": lambda w: {k: v for k, v in stage(w, ref, "mix").items() if k not in MIX_KEYS},
        **{k: (lambda w, k=k: stage(w, ref, "mix")[k]) for k in MIX_KEYS if k in section["mix"]},
    }


rule router_mix:
    input:
        router_sft=lambda w: model_location(w.family, previous_stage(w, "router"))[0],
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
        models=lambda w: models_param(w.family, {"init": previous_stage(w, "router")}),
        **mix_params("router", FR),
    threads: config["threads"]
    priority: CRITICAL_PATH_PRIORITY  # the longest chain of the build (expert -> features -> router)
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
        optim=lambda w: stage(w, "finetuned_sft", "sft"),
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
        init=lambda w: model_location(w.family, previous_stage(w, "finetuned"))[0],
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
        models=lambda w: models_param(w.family, {"init": previous_stage(w, "finetuned")}),
        **mix_params("finetuned", FT),
    threads: config["threads"]
    resources:
        gpu=lambda w: 0 if is_tiny(w.family) else 1,
    log:
        f"logs/{WORLD}/{{family}}/finetuned_mix.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/finetuned_mix.tsv"
    script:
        "../scripts/step.py"


# Sweep variants (config `sweeps`, fusionroute/catalog.py): the same jobs at other settings, each
# under a path named by its settings (build/<world>/<family>/variants/router@mix.beta~0.5), so
# the default models and every cell made from them stay.
VARIANTS = f"{BUILD}/{{family}}/variants"
wildcard_constraints:
    settings="[^/]+",


def variant_outputs(ref, log_name):
    return {"model": directory(f"{VARIANTS}/{ref}@{{settings}}"),
            "log": f"{BUILD}/{{family}}/logs/{log_name}@{{settings}}.json"}


use rule router_sft as router_sft_variant with:
    output:
        **variant_outputs("router_sft", "router_sft"),
    log:
        f"logs/{WORLD}/{{family}}/router_sft@{{settings}}.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/router_sft@{{settings}}.tsv"


use rule router_mix as router_mix_variant with:
    output:
        **variant_outputs("router", "router_mix"),
    log:
        f"logs/{WORLD}/{{family}}/router_mix@{{settings}}.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/router_mix@{{settings}}.tsv"


use rule finetuned_sft as finetuned_sft_variant with:
    output:
        **variant_outputs("finetuned_sft", "finetuned_sft"),
    log:
        f"logs/{WORLD}/{{family}}/finetuned_sft@{{settings}}.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/finetuned_sft@{{settings}}.tsv"


use rule finetuned_mix as finetuned_mix_variant with:
    output:
        **variant_outputs("finetuned", "finetuned_mix"),
    log:
        f"logs/{WORLD}/{{family}}/finetuned_mix@{{settings}}.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/finetuned_mix@{{settings}}.tsv"

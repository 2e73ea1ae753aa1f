# Baselines that are built rather than only decoded: the reward model (Sequence Selection and
# Collab score with it) and the mergekit merges. The fine-tuned model is in train.smk.


rule reward_model:
    input:
        lambda w: model_inputs(w.family, {"init": "base"}),
        preferences=PREF_DATA,
    output:
        model=directory(f"{BUILD}/{{family}}/reward_model"),
        metrics=f"{RESULTS}/{{family}}/reward_model_metrics.json",
    params:
        common=lambda w: COMMON,
        models=lambda w: models_param(w.family, {"init": "base"}),
        optim=config["reward_model"]["train"],
        holdout=config["reward_model"]["holdout"],
        offtopic=config["reward_model"].get("offtopic", 0.0),
    threads: config["threads"]
    log:
        f"logs/{WORLD}/{{family}}/reward_model.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/reward_model.tsv"
    script:
        "../scripts/step.py"


rule merge:
    input:
        lambda w: model_inputs(w.family, {"base": "base", "experts": "experts"}),
    output:
        model=directory(f"{BUILD}/{{family}}/merges/{{merge}}"),
    wildcard_constraints:
        merge="dare|task_arithmetic",
    params:
        common=lambda w: COMMON,
        merge=lambda w: w.merge,
        settings=lambda w: config["merges"][w.merge],
        models=lambda w: models_param(w.family, {"base": "base", "experts": "experts"}),
    resources:
        mem_mb=lambda w: 8000 if is_tiny(w.family) else 64000,
    log:
        f"logs/{WORLD}/{{family}}/merge_{{merge}}.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/merge_{{merge}}.tsv"
    script:
        "../scripts/step.py"

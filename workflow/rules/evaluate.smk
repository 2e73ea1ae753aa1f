# Evaluation: benchmark records, one generation job and one scoring job per table cell.
# A cell = (family, method, benchmark); its settings are rule params, so changing a method's
# hyperparameter reruns that method's cells only.
GEN = config["generation"]


def benchmark_params(benchmark):
    spec = config["benchmarks"][benchmark]
    tiny_world = all(is_tiny(f) for f in FAMILIES)
    return {
        "benchmark": benchmark,
        "n": spec["n"],
        "seed": SEED,
        "source": "tiny" if tiny_world else "hub",
        "level": config.get("tiny", {}).get("level"),
        "data_path": spec.get("data"),
        "hub_id": spec.get("hub_id"),
    }


rule benchmark_data:
    output:
        data=f"{RESULTS}/data/{{benchmark}}.jsonl",
    params:
        cell=lambda w: benchmark_params(w.benchmark),
    log:
        f"logs/{WORLD}/benchmark_data_{{benchmark}}.log",
    script:
        "../scripts/step.py"


def generate_params(w):
    spec = method(w.family, w.method)
    return {
        **COMMON,
        "benchmark": w.benchmark,
        "method": w.method,
        "kind": spec["kind"],
        "models": models_param(w.family, spec["models"]),
        "method_params": spec["params"],
        # a config's own kind (method_kinds): the module the step imports to register it
        **({"module": spec["module"]} if spec["kind"] in config.get("method_kinds", {}) else {}),
        "prompt_template": FAMILIES[w.family].get("prompt_template", config["prompt_template"]),
        "batch_size": GEN["batch_size"],
        "max_new_tokens": benchmark_spec(w.benchmark).get("max_new_tokens", GEN["max_new_tokens"]),
        "limit": benchmark_limit(w.method, w.benchmark, w.family),
        # only when set, so that configs without it keep their settings (and outputs) unchanged
        **({"max_prompt_tokens": GEN["max_prompt_tokens"]} if GEN.get("max_prompt_tokens") else {}),
    }


rule generate:
    input:
        lambda w: model_inputs(w.family, method(w.family, w.method)["models"]),
        data=f"{RESULTS}/data/{{benchmark}}.jsonl",
    output:
        generations=f"{RESULTS}/{{family}}/{{method}}/{{benchmark}}/generations.jsonl",
        settings=f"{RESULTS}/{{family}}/{{method}}/{{benchmark}}/settings.json",
    params:
        cell=generate_params,
    threads: config["threads"]
    resources:
        gpu=lambda w: 0 if is_tiny(w.family) else 1,
    log:
        f"logs/{WORLD}/{{family}}/generate/{{method}}_{{benchmark}}.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/generate/{{method}}_{{benchmark}}.tsv"
    script:
        "../scripts/step.py"


rule score:
    input:
        generations=f"{RESULTS}/{{family}}/{{method}}/{{benchmark}}/generations.jsonl",
        settings=f"{RESULTS}/{{family}}/{{method}}/{{benchmark}}/settings.json",  # its `limit`: the records to expect
        data=f"{RESULTS}/data/{{benchmark}}.jsonl",
    output:
        scores=f"{RESULTS}/{{family}}/{{method}}/{{benchmark}}/scores.json",
    params:
        benchmark=lambda w: w.benchmark,
    log:
        f"logs/{WORLD}/{{family}}/score/{{method}}_{{benchmark}}.log",
    script:
        "../scripts/step.py"

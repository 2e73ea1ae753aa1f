# The pairwise judge (paper Figures 3 and 4): every compared method answers the "general" prompt
# set, a judge compares each answer with the fine-tuned model's in both orders, and the win rates
# become grouped bars per family. Settings: the config's `judge` block (defaults below, used by
# the tiny world when the block is absent). Include this file after evaluate.smk and hub.smk.
import os

JUDGE_DEFAULTS = {
    "against": "finetuned",                           # the comparison model (a method name)
    "backend": "verifier",                            # verifier (offline, needs references) | openai
    "general": {"n": 50, "max_new_tokens": config["generation"]["max_new_tokens"]},
    "figures": {"fig3": ["fusionroute", "sequence_selection", "collab"],
                "fig4": ["base", "fusionroute_sft", "fusionroute"]},
    "workers": 4,
    "malformed_retries": 2,
    "openai": {"model": None, "model_env": "JUDGE_MODEL", "base_url": None, "base_url_env": "OPENAI_BASE_URL",
               "api_key_env": "OPENAI_API_KEY", "temperature": 0.0, "max_tokens": 512},
    "verifier": {"partial_credit": True},
}


def _merged(defaults, given):
    out = dict(defaults)
    for key, value in (given or {}).items():
        out[key] = _merged(defaults[key], value) if isinstance(defaults.get(key), dict) and isinstance(value, dict) else value
    return out


JUDGE = _merged(JUDGE_DEFAULTS, config.get("judge"))
AGAINST = JUDGE["against"]
GENERAL = f"{RESULTS}/data/general.jsonl"


def judge_settings():
    """What changes verdicts, as rule params (so a new judge model reruns the judge jobs). The
    model and endpoint are resolved from the environment here; the API key never enters params."""
    settings = {k: JUDGE[k] for k in ("backend", "workers", "malformed_retries")}
    if JUDGE["backend"] == "openai":
        cfg = dict(JUDGE["openai"])
        cfg["model"] = cfg.get("model") or os.environ.get(cfg.get("model_env") or "JUDGE_MODEL") or "gpt-4o"
        cfg["base_url"] = cfg.get("base_url") or os.environ.get(cfg.get("base_url_env") or "OPENAI_BASE_URL") or None
        settings["openai"] = cfg
    else:
        settings["verifier"] = dict(JUDGE["verifier"])
    return settings


def judge_file(family, method_name):
    return f"{RESULTS}/{family}/judge/{method_name}_vs_{AGAINST}.json"


def general_inputs(wildcards):
    return {"holdout": SFT_HOLDOUT} if HUB_WORLD else {}


# The general set is not a scored benchmark: this rule, not benchmark_data, writes it.
ruleorder: general_prompts > benchmark_data

# The judge calls an HTTP endpoint (compute nodes often have no network); figures are instant.
localrules: general_prompts, judge, fig3, fig4


rule general_prompts:
    input:
        unpack(general_inputs),
    output:
        data=GENERAL,
    params:
        source="hub" if HUB_WORLD else "tiny",
        n=JUDGE["general"]["n"],
        seed=SEED,
        level=config.get("tiny", {}).get("level"),
        evaluated={b: spec["n"] for b, spec in config["benchmarks"].items()},
    log:
        f"logs/{WORLD}/general_prompts.log",
    script:
        "../scripts/step.py"


rule judge:
    input:
        general=GENERAL,
        a=f"{RESULTS}/{{family}}/{{method}}/general/generations.jsonl",
        b=f"{RESULTS}/{{family}}/{AGAINST}/general/generations.jsonl",
    output:
        result=f"{RESULTS}/{{family}}/judge/{{method}}_vs_{AGAINST}.json",
    params:
        family=lambda w: w.family,
        method=lambda w: w.method,
        against=AGAINST,
        judge=lambda w: judge_settings(),
    log:
        f"logs/{WORLD}/{{family}}/judge/{{method}}_vs_{AGAINST}.log",
    benchmark:
        f"benchmarks/{WORLD}/{{family}}/judge/{{method}}_vs_{AGAINST}.tsv"
    script:
        "../scripts/step.py"


def figure_rule_inputs(kind):
    return {f"{family}__{m}": judge_file(family, m) for family in FAMILIES for m in JUDGE["figures"][kind]}


def figure_labels(kind):
    family = list(FAMILIES)[0]
    return {m: method(family, m)["label"] for m in JUDGE["figures"][kind]}


rule fig3:
    input:
        **figure_rule_inputs("fig3"),
    output:
        pdf=f"{RESULTS}/fig3.pdf",
        png=f"{RESULTS}/fig3.png",
    params:
        step="figure",
        kind="fig3",
        families=list(FAMILIES),
        methods=JUDGE["figures"]["fig3"],
        labels=figure_labels("fig3"),
        title=f"Judge win rate against the {method(list(FAMILIES)[0], AGAINST)['label'].lower()} ({WORLD} world)",
    log:
        f"logs/{WORLD}/fig3.log",
    script:
        "../scripts/step.py"


rule fig4:
    input:
        **figure_rule_inputs("fig4"),
    output:
        pdf=f"{RESULTS}/fig4.pdf",
        png=f"{RESULTS}/fig4.png",
    params:
        step="figure",
        kind="fig4",
        families=list(FAMILIES),
        methods=JUDGE["figures"]["fig4"],
        labels=figure_labels("fig4"),
        title=f"FusionRoute with vs. without CDPO, win rate against the {method(list(FAMILIES)[0], AGAINST)['label'].lower()} ({WORLD} world)",
    log:
        f"logs/{WORLD}/fig4.log",
    script:
        "../scripts/step.py"

# Shared helpers: where every model and artefact lives, and the catalogue of methods.
import json

WORLD = config["world"]
BUILD = f"build/{WORLD}"
RESULTS = f"results/{WORLD}"
FAMILIES = config["families"]
BENCHMARKS = list(config["benchmarks"])
SEED = config["seed"]

# Rules on the build's longest chain (the experts, their features, the router's two phases) run
# before any other ready job: on a 2-core machine the router would otherwise wait for jobs off it.
CRITICAL_PATH_PRIORITY = 10

# Settings every torch step receives; part of `params`, so changing one reruns what depends on it.
COMMON = {
    "seed": SEED,
    "device": config["device"],
    "dtype": config["dtype"],
    "prompt_template": config["prompt_template"],
    "max_len": config["max_len"],
}


def is_tiny(family):
    return FAMILIES[family]["source"] == "tiny"


# Training data. A hub world's mix training draws its SFT samples from a set disjoint from the SFT
# phase's (the paper: 200k for SFT, 100k more for mix training); the tiny world's from its SFT set.
HUB_WORLD = not any(is_tiny(f) for f in FAMILIES)
SFT_DATA = f"{BUILD}/data/sft_mix.jsonl"
PREF_DATA = f"{BUILD}/data/preferences.jsonl"
MIX_SFT_DATA = f"{BUILD}/data/mix_sft.jsonl" if HUB_WORLD else SFT_DATA
# Expert features are computed for each training set the router sees (name -> data file).
FEATURE_SETS = {"sft": SFT_DATA, "preferences": PREF_DATA, **({"mix_sft": MIX_SFT_DATA} if HUB_WORLD else {})}
MIX_FEATURES = "mix_sft" if HUB_WORLD else "sft"


def training_settings(family):
    """`training` (LoRA, launcher, ...) with the family's own changes on top."""
    return {**config.get("training", {}), **FAMILIES[family].get("training", {})}


def experts(family):
    return list(FAMILIES[family]["experts"])


# ---- models: a reference -> (location, built by this workflow?) ---------------------------------
def model_location(family, ref):
    """'base', an expert name, 'router_sft', 'router', 'finetuned_sft', 'finetuned',
    'reward_model' or 'merge:<method>' -> (directory or hub id, whether a rule builds it)."""
    fam = FAMILIES[family]
    fdir = f"{BUILD}/{family}"
    if ref in ("router_sft", "router", "finetuned_sft", "finetuned"):
        return f"{fdir}/{ref}", True
    if ref.partition(VARIANT_MARK)[0] in TRAINED_REFS:  # a sweep's retrained model (router@mix.beta~0.5)
        return f"{fdir}/variants/{ref}", True
    if ref.startswith("merge:"):
        return f"{fdir}/merges/{ref.split(':', 1)[1]}", True
    if ref == "reward_model":
        if is_tiny(family):
            return f"{fdir}/reward_model", True
        return fam["reward_model"], False
    if ref == "base":
        return (f"{fdir}/base", True) if is_tiny(family) else (fam["base"], False)
    if ref in fam["experts"]:
        return (f"{fdir}/experts/{ref}", True) if is_tiny(family) else (fam["expert_sources"][ref], False)
    raise ValueError(f"unknown model reference {ref!r} for family {family!r}")


def tokenizer_location(family):
    if is_tiny(family):
        return f"{BUILD}/tokenizer"
    return FAMILIES[family].get("tokenizer") or model_location(family, FAMILIES[family]["router_init"])[0]


def models_param(family, refs):
    """`params.models` for a step: {key: location or [locations]} plus the tokenizer."""
    out = {"tokenizer": tokenizer_location(family)}
    for key, ref in refs.items():
        if ref == "experts":
            out[key] = [model_location(family, e)[0] for e in experts(family)]
        else:
            out[key] = model_location(family, ref)[0]
    return out


def model_inputs(family, refs):
    """The built models among `refs` (and the tiny tokenizer), as files the rule depends on."""
    files = [f"{BUILD}/tokenizer"] if is_tiny(family) else []
    for ref in refs.values():
        for r in experts(family) if ref == "experts" else [ref]:
            location, built = model_location(family, r)
            if built:
                files.append(location)
    return files


# ---- methods: the rows of the tables --------------------------------------------------------------
# The catalogue is data (config/methods.yaml, fusionroute/catalog.py); checked here, at parse time,
# with the config's custom_methods and every table/figure row, so a bad entry stops before any job.
import os
import sys

from snakemake.exceptions import WorkflowError

if workflow.basedir not in sys.path:  # the package lives beside the Snakefile
    sys.path.insert(0, workflow.basedir)
from fusionroute.catalog import (TRAINED_REFS, VARIANT_MARK, CatalogError, check_config, load_catalog,
                                 previous_stage_ref, stage_settings, tables_with_sweeps)

try:
    CATALOG = load_catalog(os.path.join(workflow.basedir, "config", "methods.yaml"),
                           extra_kinds=config.get("method_kinds"))
    METHODS = check_config(config, CATALOG)
except CatalogError as err:
    raise WorkflowError(f"method catalogue: {err}") from None
# The config evaluates every registered benchmark (one module each in fusionroute/eval/benchmarks/).
from fusionroute.eval.benchmarks import benchmark_names

if set(BENCHMARKS) != set(benchmark_names()):
    raise WorkflowError(f"benchmarks: the config must name every registered benchmark; unknown "
                        f"{sorted(set(BENCHMARKS) - set(benchmark_names()))}, missing "
                        f"{sorted(set(benchmark_names()) - set(BENCHMARKS))} (registered: {', '.join(benchmark_names())})")
# Table rows: the config's, with each sweep row after the method it varies.
TABLES = tables_with_sweeps(config, next(iter(METHODS.values())))


# ---- trained models and their sweep variants --------------------------------------------------------
def trained_ref(w, ref):
    """The model a training job builds: `ref` itself, or its variant when the job's output path
    carries sweep settings (wildcard `settings`, e.g. mix.beta~0.5)."""
    settings = getattr(w, "settings", "")
    return f"{ref}{VARIANT_MARK}{settings}" if settings else ref


def stage(w, ref, name):
    """Settings of stage `name` (sft, mix) of the model a training job builds."""
    return stage_settings(config, trained_ref(w, ref), name)


def previous_stage(w, ref):
    """The model a mix-training job starts from: router_sft, or its variant with the sweep's sft settings."""
    return previous_stage_ref(trained_ref(w, ref))


def method_catalog(family):
    """name -> {kind, models, params, label, group, module}."""
    return METHODS[family]


def method(family, name):
    catalog = method_catalog(family)
    if name not in catalog:
        raise ValueError(f"unknown method {name!r}; known: {sorted(catalog)}")
    return catalog[name]


def benchmark_spec(benchmark):
    """Settings of a benchmark, or of the judge's general prompt set ("general", config `judge.general`)."""
    if benchmark == "general":
        return config.get("judge", {}).get("general", {})
    return config["benchmarks"][benchmark]


def collab_limit(benchmark):
    """Collab is costly: it may run on the first `limit_collab` samples (stated in the caption)."""
    return benchmark_spec(benchmark).get("limit_collab") or config["collab"].get("limit") or 0


def benchmark_limit(method_name, benchmark, family):
    """Samples a method decodes (0 = all): the Collab limit for Collab and for any custom method
    of kind collab (e.g. a sweep of its weight)."""
    if method_catalog(family).get(method_name, {}).get("kind") == "collab":
        return collab_limit(benchmark)
    return 0

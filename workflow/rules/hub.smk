# Training data of hub-sourced worlds (the paper's configs): the router's SFT mix (PerfectBlend),
# its test hold-out (the judge's general prompts) and the preference pairs (OpenHermesPreferences),
# from the config's `training_data` (hub ids or local files; schemas in fusionroute/hub_data.py).
# The tiny world's `tiny_data` rule writes the same two training files; exactly one of the two
# rules applies: a world is either all-tiny (tiny_data) or all-hub (hub_data, which then also takes
# precedence through the ruleorder below). Include this file after tiny.smk.
TRAINING_DATA = config.get("training_data")
SFT_HOLDOUT = f"{BUILD}/data/sft_holdout.jsonl"

if any(is_tiny(f) for f in FAMILIES) and not all(is_tiny(f) for f in FAMILIES):
    raise ValueError("config: a world's families must all be `source: tiny` or all `source: hub` "
                     f"(got {[(f, FAMILIES[f]['source']) for f in FAMILIES]})")
if HUB_WORLD and not TRAINING_DATA:
    raise ValueError("config: hub worlds need `training_data` (sft and preferences sources)")
if not HUB_WORLD and TRAINING_DATA:
    raise ValueError("config: `training_data` is only read by hub worlds; the tiny world generates its own")

if HUB_WORLD:

    # Runs on the submitting host (it needs the hub); so do the benchmark downloads.
    localrules: hub_data, benchmark_data

    ruleorder: hub_data > tiny_data

    rule hub_data:
        output:
            sft_mix=SFT_DATA,
            mix_sft=MIX_SFT_DATA,
            holdout=SFT_HOLDOUT,
            preferences=PREF_DATA,
            stats=f"{BUILD}/data/training_data_stats.json",
        params:
            seed=SEED,
            sft=TRAINING_DATA["sft"],
            preferences=TRAINING_DATA["preferences"],
        log:
            f"logs/{WORLD}/hub_data.log",
        benchmark:
            f"benchmarks/{WORLD}/hub_data.tsv"
        script:
            "../scripts/step.py"

"""Workflow steps of workflow/rules/baselines.smk: the baselines that need building, the reward
model (tiny world) and the mergekit merges."""
from __future__ import annotations

from fusionroute.io import read_jsonl, write_json
from fusionroute.steps import step


@step
def reward_model(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    from baselines.reward import RewardTrainConfig, train_reward_model
    from fusionroute.scaling import is_main_process
    from fusionroute.training import OptimConfig

    models = params["models"]
    optim = OptimConfig.from_dict({**params["optim"], "seed": params["seed"]})
    cfg = RewardTrainConfig(max_len=params["max_len"], heldout_fraction=params["holdout"], split_seed=params["seed"],
                            offtopic_ratio=params.get("offtopic", 0.0))
    metrics = train_reward_model(models["init"], read_jsonl(inputs["preferences"]), params["prompt_template"],
                                 outputs["model"], optim, cfg, tokenizer=models["tokenizer"],
                                 dtype=params.get("dtype", "float32"), device=params.get("device", "cpu"))
    if is_main_process():
        write_json(outputs["metrics"], metrics)


@step
def merge(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """mergekit DARE / TaskArithmetic over the experts' common base, on the CPU (the merge rule asks
    the scheduler for no GPU; mergekit streams tensors, so memory, not a GPU, is its limit)."""
    from baselines.merges import merge_config, run_merge
    from fusionroute.models import load_tokenizer
    from fusionroute.vocab import shared_vocabulary

    models = params["models"]
    sources = {"base": models["base"], **{f"expert {i}": e for i, e in enumerate(models["experts"])}}
    # the policy check before mergekit; experts with appended tokens are aligned to the base's
    # tokenizer by mergekit (with identical vocabularies there is nothing to align)
    tokenizers = {name: load_tokenizer(src) for name, src in sources.items()}
    vocab = shared_vocabulary(load_tokenizer(models["tokenizer"]), tokenizers, {})
    print(vocab.describe())
    mergekit_method = {"dare": "dare_linear", "task_arithmetic": "task_arithmetic"}[params["merge"]]
    spec = {"lambda": params["settings"].get("weight", 1.0), "dtype": params.get("dtype", "float32")}
    if len({len(t) for t in tokenizers.values()}) > 1:
        spec["tokenizer_source"] = "base"
    if "density" in params["settings"]:
        spec["density"] = params["settings"]["density"]
    config = merge_config(mergekit_method, models["base"], models["experts"], spec)
    run_merge(config, outputs["model"], seed=params["seed"], copy_tokenizer_from=models["tokenizer"], device="cpu")

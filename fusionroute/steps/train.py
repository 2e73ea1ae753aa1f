"""Workflow steps of workflow/rules/train.smk (and the tiny world's fine-tunes in tiny.smk):
supervised fine-tuning, expert features, router SFT, mix training (CDPO / the fine-tuned baseline's DPO)."""
from __future__ import annotations

import random
from pathlib import Path

from fusionroute.io import read_jsonl
from fusionroute.steps import step
from fusionroute.steps.common import model_files, seed_everything


def load_sft_encoded(path: str, tokenizer, template: str, max_len: int) -> list:
    from fusionroute.data import encode_pair, render_prompt

    return [
        encode_pair(tokenizer, render_prompt(template, r["instruction"]), r["response"], max_len)
        for r in read_jsonl(path)
    ]


def load_pairs(path: str, tokenizer, template: str, max_len: int) -> list:
    from fusionroute.data import encode_pair, render_prompt
    from fusionroute.trainers import PreferencePair

    pairs = []
    for r in read_jsonl(path):
        prompt = render_prompt(template, r["instruction"])
        pairs.append(PreferencePair(encode_pair(tokenizer, prompt, r["chosen"], max_len),
                                    encode_pair(tokenizer, prompt, r["rejected"], max_len)))
    return pairs


def _checkpoint(inputs: dict, outputs: dict, params: dict) -> Path:
    """A training step's resumable state (beside its model), kept only for the same input files,
    models, params and code (fusionroute.training.keyed_checkpoint)."""
    from fusionroute.training import keyed_checkpoint

    return keyed_checkpoint(Path(outputs["model"] + ".ckpt"),
                            {"inputs": model_files(inputs), "models": model_files(params["models"]), "params": params})


@step
def finetune_lm(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Supervised fine-tuning of a causal LM with the LM loss only (the tiny experts)."""
    from fusionroute.models import load_causal_lm, load_tokenizer
    from fusionroute.scaling import is_main_process, load_device, prepare_for_training, save_trained
    from fusionroute.trainers import train_lm
    from fusionroute.training import OptimConfig, write_log

    seed_everything(params["seed"])
    models = params["models"]
    tokenizer = load_tokenizer(models["tokenizer"])
    # load_device: under `accelerate launch` this process's own device (the CPU under FSDP, which
    # moves the shard), never plain "cuda" (every process would land on cuda:0)
    model = load_causal_lm(models["init"], params.get("dtype", "float32"), load_device(params.get("device", "cpu")))
    model = prepare_for_training(model, params.get("scaling"))
    encoded = load_sft_encoded(inputs["data"], tokenizer, params["prompt_template"], params["max_len"])
    cfg = OptimConfig.from_dict({**params["optim"], "seed": params["seed"]})
    result = train_lm(model, encoded, cfg, tokenizer.pad_token_id, params.get("desc", "fine-tune"),
                      checkpoint_dir=_checkpoint(inputs, outputs, params))
    save_trained(result.modules["model"], outputs["model"], tokenizer)
    if is_main_process():
        write_log(outputs["log"], result.log)


def _load_experts(paths: list[str], dtype: str, device: str):
    from fusionroute.models import load_causal_lm

    return [load_causal_lm(p, dtype, device) for p in paths]


@step
def expert_features(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Each expert's gold-token log-prob and argmax at every response position, for every SFT
    set named in `outputs` (sft, mix_sft) and for both sides of every preference pair. One expert
    in memory at a time, length-sorted batches of at most `max_tokens_per_batch` padded tokens,
    resumable shards of `shard_size` samples (fusionroute.features); split over the visible GPUs."""
    from fusionroute.features import (DEFAULT_MAX_TOKENS_PER_BATCH, DEFAULT_SHARD_SIZE, SINGLE_PART, ExpertSource,
                                      FeatureSet, compute_feature_files, expert_vocabulary)

    models, names = params["models"], params["expert_names"]
    tok, vocab = expert_vocabulary(names, models["experts"], models["tokenizer"])
    print(vocab.describe())
    template, max_len = params["prompt_template"], params["max_len"]
    dtype = params.get("dtype", "float32")
    meta = {"experts": names, "max_len": max_len, "vocab_size": vocab.size}
    sets = []
    for name in outputs:
        if name == "preferences":
            pairs = load_pairs(inputs["preferences"], tok, template, max_len)
            parts = {"chosen": [p.chosen for p in pairs], "rejected": [p.rejected for p in pairs]}
        else:
            parts = {SINGLE_PART: load_sft_encoded(inputs[name], tok, template, max_len)}
        sets.append(FeatureSet(name, outputs[name], parts))
    compute_feature_files(
        sets, [ExpertSource(n, s, dtype) for n, s in zip(names, models["experts"])], tok.pad_token_id, vocab.size,
        meta, settings={"tokenizer": models["tokenizer"], "max_len": max_len, "dtype": dtype},
        device=params.get("device", "cpu"), shard_size=params.get("shard_size", DEFAULT_SHARD_SIZE),
        max_tokens_per_batch=params.get("max_tokens_per_batch", DEFAULT_MAX_TOKENS_PER_BATCH))


@step
def router_sft(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    from fusionroute.features import load_features
    from fusionroute.models import load_causal_lm, load_tokenizer
    from fusionroute.router import RouterModel
    from fusionroute.scaling import is_main_process, load_device, prepare_for_training, process_device, save_trained
    from fusionroute.trainers import RoutingConfig, train_router_sft
    from fusionroute.training import OptimConfig, write_log

    seed_everything(params["seed"])
    models = params["models"]
    tokenizer = load_tokenizer(models["tokenizer"])
    dtype, device = params.get("dtype", "float32"), params.get("device", "cpu")
    lm = load_causal_lm(models["init"], dtype, load_device(device))  # this process's device (see finetune_lm)
    router = prepare_for_training(RouterModel.from_lm(lm, params["expert_names"], seed=params["seed"]),
                                  params.get("scaling"))
    encoded = load_sft_encoded(inputs["sft"], tokenizer, params["prompt_template"], params["max_len"])
    features, _ = load_features(inputs["features"])
    routing = RoutingConfig(lam=params["lam"], reading=params["reading"])
    experts = _load_experts(models["experts"], dtype, process_device(device)) if routing.reading == "mixture" else None
    cfg = OptimConfig.from_dict({**params["optim"], "seed": params["seed"]})
    result = train_router_sft(router, encoded, features, cfg, routing, tokenizer.pad_token_id, experts,
                              checkpoint_dir=_checkpoint(inputs, outputs, params))
    save_trained(result.modules["router"], outputs["model"], tokenizer)
    if is_main_process():
        write_log(outputs["log"], result.log)


@step
def mix_train(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Algorithm 1 from an SFT checkpoint: a router (CDPO) or a plain LM (the fine-tuned
    baseline's DPO), depending on `params['policy']`.

    The frozen (C)DPO terms come first, from `<model>.ref_logprobs.pt` when it holds them for the
    same inputs (a resumed or re-run job), else computed once with the reference (the SFT
    checkpoint, split over the processes under accelerate, each on its own device), saved there
    and the reference freed: only then is the policy loaded, so training never holds a reference
    model. Batches of the reference pass: `optim.reference_batch_size` pairs (default 16) within
    `optim.max_tokens_per_micro_batch` padded tokens."""
    from fusionroute.features import load_features
    from fusionroute.models import load_causal_lm, load_tokenizer
    from fusionroute.router import RouterModel
    from fusionroute.scaling import is_main_process, load_device, prepare_for_training, process_device, save_trained
    from fusionroute.trainers import MixConfig, mix_train as run_mix, model_fingerprint, stored_reference
    from fusionroute.training import OptimConfig, write_log

    seed_everything(params["seed"])
    models = params["models"]
    tokenizer = load_tokenizer(models["tokenizer"])
    dtype, device = params.get("dtype", "float32"), params.get("device", "cpu")
    is_router = params["policy"] == "router"

    def load(where: str):
        if is_router:
            return RouterModel.from_pretrained(models["init"], dtype=_dtype(dtype)).to(where)
        return load_causal_lm(models["init"], dtype, where)

    template, max_len = params["prompt_template"], params["max_len"]
    sft = load_sft_encoded(inputs["sft"], tokenizer, template, max_len)
    pairs = load_pairs(inputs["preferences"], tokenizer, template, max_len)
    rng = random.Random(params["seed"])
    sft_idx = sorted(rng.sample(range(len(sft)), min(params["n_sft"], len(sft))))
    pair_idx = sorted(rng.sample(range(len(pairs)), min(params["n_pref"], len(pairs))))
    sft_features = pair_features = None
    if is_router:
        all_sft_features, _ = load_features(inputs["sft_features"])
        all_pair_features, _ = load_features(inputs["pref_features"])
        sft_features = [all_sft_features[i] for i in sft_idx]
        pair_features = [all_pair_features[j] for j in pair_idx]
    sft = [sft[i] for i in sft_idx]
    pairs = [pairs[j] for j in pair_idx]
    mix = MixConfig(lam=params["lam"], beta=params["beta"], reading=params.get("reading", "literal"))
    cfg = OptimConfig.from_dict({**params["optim"], "seed": params["seed"]})
    frozen = stored_reference(
        outputs["model"] + ".ref_logprobs.pt", lambda: load(process_device(device)), pairs, tokenizer.pad_token_id,
        mix.beta, pair_features,
        reference={"init": model_fingerprint(models["init"]), "dtype": dtype, "policy": params["policy"]},
        batch_size=int(params["optim"].get("reference_batch_size", 16)), max_tokens=cfg.max_tokens_per_micro_batch)
    seed_everything(params["seed"])  # the policy's set-up (LoRA init) sees the same RNG, stored reference or not
    policy = prepare_for_training(load(load_device(device)), params.get("scaling"))
    result = run_mix(policy, sft, sft_features, pairs, frozen, cfg, mix, tokenizer.pad_token_id,
                     "mix training" if is_router else "SFT+DPO mix", checkpoint_dir=_checkpoint(inputs, outputs, params))
    save_trained(result.modules["policy"], outputs["model"], tokenizer)
    if is_main_process():
        write_log(outputs["log"], result.log, {
            "mean_bias": float(frozen["bias"].mean()),
            "reference_margin": float((frozen["ref_chosen"] - frozen["ref_rejected"]).mean())})


def _dtype(name: str):
    from fusionroute.models import DTYPES

    return DTYPES[name]

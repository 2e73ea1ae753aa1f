"""The workflow's steps as plain functions: one per Snakemake rule, same code for every world.

Each step takes its rule's named inputs, outputs and params (dicts of paths and values), so a
rule is a one-line call (workflow/scripts/step.py dispatches on the rule name) and a test can
run a step without Snakemake. Heavy imports stay inside the steps.
"""
from __future__ import annotations

import importlib
import json
import random
from pathlib import Path
from typing import Any

from fusionroute.io import read_jsonl, write_json, write_jsonl
from fusionroute.steps import STEPS, run_step, step

__all__ = ["STEPS", "run_step", "step"]  # the registry, re-exported for callers of the old home


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Tiny world: data, tokenizer, base model, experts
# ----------------------------------------------------------------------------------------------


@step
def tiny_data(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """All synthetic training sets of the tiny world (the benchmarks come from `benchmark_data`)."""
    from fusionroute.tiny import tasks

    seed, sizes, level = params["seed"], params["sizes"], params.get("level")
    write_jsonl(outputs["pretrain"], [{"text": t} for t in tasks.make_pretraining_corpus(sizes["pretrain"], seed, level=level)])
    for domain in ("math", "code", "instruct"):
        write_jsonl(outputs[f"sft_{domain}"], tasks.make_sft(domain, sizes["expert_sft"], seed + 1, level=level))
    write_jsonl(outputs["sft_mix"], tasks.make_sft_mix(sizes["sft_mix"], seed + 2, level=level))
    # the generalist instruct model's SFT data: the same balanced mix of every domain, drawn apart
    write_jsonl(outputs["sft_generalist"], tasks.make_sft_mix(sizes["generalist_sft"], seed + 4, level=level))
    write_jsonl(outputs["preferences"], tasks.make_preferences(sizes["preferences"], seed + 3, level=level))


@step
def tiny_tokenizer(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    from fusionroute.tiny.tokenizer import train_tokenizer

    texts = [row["text"] for row in read_jsonl(inputs["pretrain"])]
    for name in ("sft_math", "sft_code", "sft_instruct"):
        texts += [render_training_text(params["prompt_template"], r) for r in read_jsonl(inputs[name])]
    train_tokenizer(texts, params["vocab_size"], outputs["tokenizer"])


def render_training_text(template: str, record: dict) -> str:
    from fusionroute.data import render_prompt

    return render_prompt(template, record["instruction"]) + record["response"]


@step
def tiny_base(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Initialise a small LlamaForCausalLM and pretrain it briefly on the mixed corpus."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fusionroute.data import encode_text, pack_texts
    from fusionroute.models import load_tokenizer
    from fusionroute.trainers import train_lm
    from fusionroute.training import OptimConfig, write_log

    _seed_everything(params["seed"])
    tokenizer = load_tokenizer(inputs["tokenizer"])
    arch = dict(params["architecture"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=params["max_positions"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **arch,
    )
    model = LlamaForCausalLM(config)
    texts = [row["text"] for row in read_jsonl(inputs["pretrain"])]
    encoded = pack_texts([encode_text(tokenizer, t, params["max_len"]) for t in texts], params["block_size"])
    cfg = OptimConfig.from_dict({**params["optim"], "seed": params["seed"]})
    log = train_lm(model, encoded, cfg, tokenizer.pad_token_id, "pretrain base").log
    model.save_pretrained(outputs["model"])
    tokenizer.save_pretrained(outputs["model"])
    write_log(outputs["log"], log, {"parameters": sum(p.numel() for p in model.parameters())})


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
                            {"inputs": _model_files(inputs), "models": _model_files(params["models"]), "params": params})


@step
def finetune_lm(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Supervised fine-tuning of a causal LM with the LM loss only (the tiny experts)."""
    from fusionroute.models import load_causal_lm, load_tokenizer
    from fusionroute.scaling import is_main_process, load_device, prepare_for_training, save_trained
    from fusionroute.trainers import train_lm
    from fusionroute.training import OptimConfig, write_log

    _seed_everything(params["seed"])
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


# ----------------------------------------------------------------------------------------------
# FusionRoute: expert features, router SFT, mix training (CDPO)
# ----------------------------------------------------------------------------------------------


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

    _seed_everything(params["seed"])
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

    _seed_everything(params["seed"])
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
    _seed_everything(params["seed"])  # the policy's set-up (LoRA init) sees the same RNG, stored reference or not
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


# ----------------------------------------------------------------------------------------------
# Evaluation: benchmark data, generation, scoring, tables
# ----------------------------------------------------------------------------------------------


@step
def benchmark_data(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """The evaluation records of one benchmark, in the real dataset's schema, with ids."""
    name, n, seed = params["benchmark"], params["n"], params["seed"]
    if params["source"] == "tiny":
        from fusionroute.tiny import tasks

        records = tasks.make_benchmark(name, n, seed, level=params.get("level"))
        from fusionroute.eval.benchmarks import load_records

        tmp = Path(outputs["data"]).with_suffix(".raw.jsonl")
        write_jsonl(tmp, records)
        records = load_records(name, data_path=str(tmp), hub_id=None, n=None, seed=seed)
        tmp.unlink()
    else:
        from fusionroute.eval.benchmarks import load_records

        records = load_records(name, data_path=params.get("data_path"), hub_id=params.get("hub_id"), n=n, seed=seed)
    write_jsonl(outputs["data"], records)


def _model_files(models: dict[str, Any]) -> dict[str, Any]:
    """Fingerprints of the files behind every path (a model folder, a data file; a hub id: the id itself)."""
    from fusionroute.trainers import model_fingerprint

    return {key: [model_fingerprint(v) for v in value] if isinstance(value, list) else model_fingerprint(value)
            for key, value in sorted(models.items())}


def _fit_instructions(tokenizer_source: str, template: str, instructions: list[str], limit: int) -> list[str]:
    """Cut over-long prompts (generation.max_prompt_tokens) so one long prompt cannot run a decoding
    batch out of memory; says how many were cut."""
    from transformers import AutoTokenizer

    from fusionroute.data import fit_instruction

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    fitted = [fit_instruction(tokenizer, template, text, limit) for text in instructions]
    cut = sum(was_cut for _, was_cut in fitted)
    if cut:
        print(f"[generate] {cut} of {len(instructions)} prompt(s) over generation.max_prompt_tokens = {limit} tokens: "
              f"the middle of their instruction is cut (marked ' [...] ')", flush=True)
    return [text for text, _ in fitted]


@step
def generate(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    from fusionroute.data import render_prompt
    from fusionroute.eval.benchmarks import instruction_for
    from fusionroute.generation import MethodContext, build_generator, run_generation
    from fusionroute.provenance import code_version, imported_package_files

    _seed_everything(params["seed"])
    records = read_jsonl(inputs["data"])
    if params.get("limit"):
        records = records[: params["limit"]]
    def instruction(record: dict) -> str:
        # "general" is the judge's open-ended prompt set (Figures 3 and 4): records carry the instruction.
        return record["instruction"] if params["benchmark"] == "general" else instruction_for(params["benchmark"], record)

    models = dict(params["models"])
    tokenizer = models.pop("tokenizer")
    instructions = [instruction(r) for r in records]
    if params.get("max_prompt_tokens"):
        instructions = _fit_instructions(tokenizer, params["prompt_template"], instructions,
                                         int(params["max_prompt_tokens"]))
    samples = [{"id": r["id"], "prompt": render_prompt(params["prompt_template"], text)}
               for r, text in zip(records, instructions)]
    ctx = MethodContext(kind=params["kind"], inputs=models, params=params.get("method_params", {}),
                        tokenizer=tokenizer, dtype=params.get("dtype", "float32"),
                        device=params.get("device", "cpu"), prompt_template=params["prompt_template"])
    if params.get("module"):  # a kind the config registers (method_kinds)
        importlib.import_module(params["module"])
    generator = build_generator(ctx)
    settings = {k: params[k] for k in sorted(params)}
    # the package code the generator runs (its modules are imported by now): part of the resume key,
    # and recorded so that tables can mark cells whose code changed since (fusionroute.provenance)
    code = code_version()
    run_generation(generator, samples, outputs["generations"], params["batch_size"], params["max_new_tokens"],
                   settings, desc=f"{params['method']}/{params['benchmark']}",
                   resume_key={**settings, "model_files": _model_files(params["models"]), "code": code["code_hash"]})
    write_json(outputs["settings"], {**settings, "code": code_version(sorted(set(code["files"]) | set(imported_package_files())))})


@step
def score(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Score one cell, strictly: a torn, empty or incomplete generations file stops the step
    (fusionroute.eval.scoring.ScoringInputError) instead of being scored as if complete."""
    from fusionroute.eval.scoring import score_files
    from fusionroute.io import read_json

    # The generate step decodes only the first `limit` records when asked (Collab's subset); its
    # settings.json, written next to the generations by the same job, says so. Expect just those.
    settings = Path(inputs.get("settings") or Path(inputs["generations"]).with_name("settings.json"))
    limit = read_json(settings).get("limit") if settings.is_file() else None
    result = score_files(params["benchmark"], Path(inputs["generations"]), Path(inputs["data"]),
                         limit=limit, allow_partial=bool(params.get("allow_partial", False)))
    write_json(outputs["scores"], result)


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


@step
def table(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Table 1 / Table 2 from scores.json files; rows list their score files by benchmark."""
    from fusionroute.eval.tables import Row, load_row, write_table

    rows: list[Row] = []
    for spec in params["rows"]:
        row = load_row(spec["family"], spec["group"], spec["method"], spec["scores"])
        row.stale = frozenset(b for b, path in spec["scores"].items() if _cell_is_stale(Path(path).with_name("settings.json")))
        cost = spec.get("forwards")
        if cost:
            row.note = _forwards_note([read_jsonl(p) for p in cost])
        rows.append(row)
    write_table(rows, outputs["tex"], params["caption"], params["label"])


def _cell_is_stale(settings: Path) -> bool:
    """Whether a cell's generate step ran code that has changed since (fusionroute.provenance)."""
    from fusionroute.io import read_json
    from fusionroute.provenance import is_stale

    return settings.is_file() and is_stale(read_json(settings).get("code"))


def _forwards_note(generation_files: list[list[dict]]) -> str:
    """Model forwards per emitted token over all benchmarks of a method (where recorded)."""
    forwards = sum(r.get("forwards", 0) for rows in generation_files for r in rows)
    tokens = sum(max(1, r.get("n_tokens", 0)) for rows in generation_files for r in rows)
    return f"{forwards / tokens:.1f} fwd/token" if forwards else ""


@step
def side_by_side(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Table 1 / Table 2 beside the paper's numbers ("ours | paper" per cell)."""
    from fusionroute.eval.claims import write_side_by_side

    write_side_by_side(params["rows"], inputs["paper"], params["table"], outputs["tex"], outputs["md"],
                       params["caption"], params["label"])


@step
def claims(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """The paper's claims tested on our scores and judge verdicts (claims.md, claims.json)."""
    from fusionroute.eval.claims import write_claims

    write_claims(params["families"], inputs["paper"], outputs["md"], outputs["json"], params["table1"],
                 world=params["world"], seed=params["seed"], alpha=params["alpha"], power=params["power"],
                 resamples=params["resamples"])


@step
def routing_summary(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Share of emitted tokens per expert on each benchmark, for each routed method."""
    from fusionroute.io import atomic_write_text

    names = params["expert_names"]
    summary: dict = {}
    for key, path in inputs.items():
        method_name, benchmark = key.split("__")
        counts = [0] * len(names)
        for row in read_jsonl(path):
            for e in row.get("expert_ids", []):
                counts[e] += 1
        total = max(1, sum(counts))
        summary.setdefault(method_name, {})[benchmark] = {n: c / total for n, c in zip(names, counts)}
    write_json(outputs["json"], summary)
    lines = []
    for method_name, per_bench in summary.items():
        lines += [f"### {method_name}", "", "| Benchmark | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for benchmark, shares in per_bench.items():
            lines.append(f"| {benchmark} | " + " | ".join(f"{shares[n]:.2f}" for n in names) + " |")
        lines.append("")
    atomic_write_text(outputs["md"], "\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Baselines that need building: reward model (tiny world) and mergekit merges
# ----------------------------------------------------------------------------------------------


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

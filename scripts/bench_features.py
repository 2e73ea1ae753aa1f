"""Peak memory and time of expert features: the old code vs fusionroute.features, on a CPU.

    ./run python scripts/bench_features.py            # both configurations below, about 2 minutes
    ./run python scripts/bench_features.py --only fp32

The old code (kept verbatim below as `legacy_compute_expert_features`, also the tests' reference)
held every expert in memory, ran unsorted batches of 16 and reduced the whole [batch, length,
vocab] logits with an fp32 copy; the new step (`compute_feature_files`) loads one expert at a
time, batches length-sorted samples under a token budget and never forms those logits.

Each implementation runs in its own subprocess on the same random experts (saved to disk, so
loading is part of the measurement, as in the workflow step) and the same samples; the peak is
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs just before the
work) minus its resident set at that moment: everything the step allocates, weights included
(glibc's mmap threshold is fixed at 128 KiB in both, so freed tensors leave the resident set).
Configurations: `fp32` (a vocabulary of 32k as in Llama-2/Mistral, so logits dominate as they do
for an 8B model at long lengths) and `bf16` (the paper's dtype: the old code's fp32 copy of bf16
logits is the "4x" of the issue; smaller, because this CPU's bf16 matmuls are ~30x slower than
fp32 ones). The new code's fp32 logit chunk is scaled down with the models (16 / 4 MiB instead
of the step's 256 MiB default, which is 1.6% of one 8B expert's bf16 weights). Not a test: numbers
depend on the machine; the ratios are what carries over.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedModel

from fusionroute.data import Encoded, collate
from fusionroute.io import progress
from fusionroute.losses import gather_logprobs, shift
from fusionroute.vocab import check_logit_widths, output_rows

CONFIGS = {
    "fp32": {"dtype": "float32", "vocab": 32000, "hidden": 128, "layers": 2, "n": 32, "min_len": 32,
             "max_len": 512, "max_tokens_per_batch": 4096, "shard_size": 16, "logit_chunk_bytes": 16 * 2**20},
    "bf16": {"dtype": "bfloat16", "vocab": 8192, "hidden": 64, "layers": 2, "n": 16, "min_len": 32,
             "max_len": 192, "max_tokens_per_batch": 1024, "shard_size": 16, "logit_chunk_bytes": 4 * 2**20},
}


# ----------------------------------------------------------------------------------------------
# The old implementation (fusionroute/features.py before issue 14), verbatim. The two helpers it
# takes from fusionroute/losses.py (`shift`, `gather_logprobs`) are imported: they are unchanged
# since (the small-logits path of `losses.token_logprobs`).
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def legacy_compute_expert_features(
    experts: Sequence[PreTrainedModel], encoded: Sequence[Encoded], pad_token_id: int, batch_size: int = 16,
    desc: str = "expert features", vocab_size: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    vocab = check_logit_widths({f"expert {i}": output_rows(e) for i, e in enumerate(experts)}, vocab_size)
    device = experts[0].device
    out: list[dict[str, torch.Tensor]] = []
    for start in progress(range(0, len(encoded), batch_size), desc=desc):
        chunk = encoded[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        golds, argmaxes = [], []
        for expert in experts:
            logits = expert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab]
            shifted, targets, mask = shift(logits, batch["labels"])
            golds.append(gather_logprobs(shifted, targets))
            argmaxes.append(shifted.argmax(-1))
        gold = torch.stack(golds, -1).float().cpu()
        argmax = torch.stack(argmaxes, -1).int().cpu()
        mask = mask.cpu()
        for row in range(len(chunk)):
            out.append({"gold": gold[row][mask[row]].clone(), "argmax": argmax[row][mask[row]].clone()})
    return out


# ----------------------------------------------------------------------------------------------
# Setup (parent) and one measured run (worker subprocess)
# ----------------------------------------------------------------------------------------------


def make_experts(root: Path, cfg: dict, n_experts: int = 3) -> list[str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    dirs = []
    for seed in range(n_experts):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=2 * cfg["hidden"],
                             num_hidden_layers=cfg["layers"], num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=2 * cfg["max_len"], bos_token_id=1, eos_token_id=2,
                             pad_token_id=0, tie_word_embeddings=False)
        model = LlamaForCausalLM(config).to(getattr(torch, cfg["dtype"]))
        directory = root / f"expert{seed}"
        model.save_pretrained(directory)
        dirs.append(str(directory))
    return dirs


def make_samples(cfg: dict, seed: int = 0) -> list[dict]:
    """Random prompt+response token sequences, lengths uniform in [min_len, max_len], in no order."""
    rng = random.Random(seed)
    samples = []
    for _ in range(cfg["n"]):
        length = rng.randint(cfg["min_len"], cfg["max_len"])
        prompt = max(2, int(length * rng.uniform(0.1, 0.4)))
        ids = [1] + [rng.randrange(3, cfg["vocab"]) for _ in range(length - 1)]
        samples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return samples


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def worker(impl: str, root: Path, cfg: dict) -> dict:
    from fusionroute.features import SINGLE_PART, ExpertSource, FeatureSet, compute_feature_files, save_features
    from fusionroute.models import load_causal_lm

    setup = json.loads((root / "setup.json").read_text())
    samples = [Encoded(s["input_ids"], s["labels"]) for s in setup["samples"]]
    out = root / f"{impl}.pt"
    meta = {"experts": [f"e{i}" for i in range(len(setup["experts"]))], "vocab_size": cfg["vocab"]}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        base = _status("VmRSS")
    except OSError:
        base = _status("VmHWM")
    start = time.perf_counter()
    if impl == "old":
        models = [load_causal_lm(d, cfg["dtype"], "cpu") for d in setup["experts"]]  # as ExpertPool.load
        features = legacy_compute_expert_features(models, samples, 0, vocab_size=cfg["vocab"])
        del models
        save_features(out, features, meta)
    else:
        experts = [ExpertSource(f"e{i}", d, cfg["dtype"]) for i, d in enumerate(setup["experts"])]
        compute_feature_files([FeatureSet("bench", out, {SINGLE_PART: samples})], experts, 0, cfg["vocab"], meta,
                              max_tokens_per_batch=cfg["max_tokens_per_batch"], shard_size=cfg["shard_size"],
                              logit_chunk_bytes=cfg["logit_chunk_bytes"], log=lambda _: None)
    seconds = time.perf_counter() - start
    return {"peak_bytes": _status("VmHWM") - base, "seconds": seconds}


def run_config(name: str, cfg: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench_features_{name}_") as tmp:
        root = Path(tmp)
        experts = make_experts(root, cfg)
        (root / "setup.json").write_text(json.dumps({"experts": experts, "samples": make_samples(cfg)}))
        # glibc keeps freed blocks of up to 32 MiB in its heap once one such block was freed (its
        # dynamic mmap threshold), so the resident set would show allocator retention, not what the
        # code holds; a fixed threshold returns every large block at once (both implementations).
        env = {**os.environ, "FUSIONROUTE_NO_PROGRESS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
        results = {}
        for impl in ("old", "new"):
            proc = subprocess.run([sys.executable, __file__, "--worker", impl, "--root", str(root),
                                   "--config", json.dumps(cfg)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"{impl} worker failed:\n{proc.stderr[-3000:]}")
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        from fusionroute.features import load_features

        old, _ = load_features(root / "old.pt")
        new, _ = load_features(root / "new.pt")
        gold_diff = max(float((a["gold"] - b["gold"]).abs().max()) for a, b in zip(old, new))
        agree = sum(int((a["argmax"] == b["argmax"]).sum()) for a, b in zip(old, new))
        total = sum(a["argmax"].numel() for a in old)
        weights = sum(f.stat().st_size for d in experts for f in Path(d).glob("*.safetensors"))
        lengths = [len(s["input_ids"]) for s in json.loads((root / "setup.json").read_text())["samples"]]
    batch_logits = 16 * max(lengths) * cfg["vocab"] * torch.finfo(getattr(torch, cfg["dtype"])).bits // 8
    return {**results, "gold_max_abs_diff": gold_diff, "argmax_agreement": agree / total,
            "weights_bytes": weights, "old_batch_logits_bytes": batch_logits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--worker", choices=("old", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.root), json.loads(args.config))))
        return 0
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    mib = 2**20
    print(f"{'config':<6} {'old peak':>10} {'new peak':>10} {'ratio old/new':>14} {'old s':>7} {'new s':>7}"
          f"  {'(3 experts; weights, one old batch of bf16/fp32 logits)':<40}")
    for name in args.only or list(CONFIGS):
        cfg = CONFIGS[name]
        r = run_config(name, cfg)
        old, new = r["old"], r["new"]
        print(f"{name:<6} {old['peak_bytes'] / mib:>8.0f}Mi {new['peak_bytes'] / mib:>8.0f}Mi "
              f"{old['peak_bytes'] / new['peak_bytes']:>13.2f}x {old['seconds']:>7.1f} {new['seconds']:>7.1f}"
              f"  weights {r['weights_bytes'] / mib:.0f}Mi, logits {r['old_batch_logits_bytes'] / mib:.0f}Mi; "
              f"time ratio {old['seconds'] / new['seconds']:.2f}x; max |gold diff| {r['gold_max_abs_diff']:.1e}, "
              f"argmax agreement {r['argmax_agreement']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

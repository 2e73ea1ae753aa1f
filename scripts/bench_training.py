"""Training memory and precision, old code against new, measured side by side in one run (CPU).

    ./run python scripts/bench_training.py              # every measurement (~17 minutes on 2 busy cores)
    ./run python scripts/bench_training.py --quick      # smaller sizes and fewer steps (~6 minutes)

"Old" is the training code of a pinned commit (BASELINE, the last one before fp32 master weights,
token budgets, chunked log-probs and the stored reference), extracted with `git archive` into a
temporary folder; "new" is this working tree. Every measurement runs in its own subprocess with
PYTHONPATH pointing at one of the two, so both run the same script on the same machine, one after
the other. Nothing here is a test: the ratios go to stdout (and --json).

1. bf16 updates. A router (small random Llama + routing head) in bfloat16 trains N steps of router
   SFT at lr 1e-5; printed: the share of weights that changed, by group. Old: the bf16 weights
   themselves (AdamW on bf16). New: the fp32 master weights training continues from, and the bf16
   copy that is saved (a weight moves there once its accumulated updates pass half a bf16 ulp).
   A float32 run is the reference ("in fp32 all change").
2. Peak memory of one training step. Peak RSS of the subprocess during one router-SFT step, one
   mix-training step (SFT + CDPO rows) and the CDPO reference pass, above the RSS after the model
   is loaded (/proc/self/clear_refs resets the high-water mark; glibc is told to mmap every block
   over 64 KiB so freed tensors leave the RSS). The model is logit-heavy on purpose (32k
   vocabulary, small decoder), as an 8B Llama with its 128k vocabulary is at 16 x 2048 tokens:
   there the fp32 [batch, length, vocab] copies dominate. New runs: the same micro-batch without
   a budget (chunked log-probs + fp32 masters only), and with `max_tokens_per_micro_batch`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "03fcb6581925279d1ca756a04512ac7f71c1b4b0"  # before issue 14's training changes


# ----------------------------------------------------------------------------------------------
# Worker side (runs inside a subprocess, against the old or the new code)
# ----------------------------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status("VmRSS")


def _router(spec: dict, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fusionroute.router import RouterModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=2 * spec["hidden"],
                         num_hidden_layers=spec["layers"], num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    lm = LlamaForCausalLM(config).to(dtype).eval()
    return RouterModel.from_lm(lm, ["math", "code", "instruct"], seed=0)


def _samples(n: int, length: int, vocab: int, seed: int):
    import torch

    from fusionroute.data import IGNORE, Encoded

    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        size = max(8, length - (k % 4) * (length // 8))  # a little spread of lengths
        ids = torch.randint(3, vocab, (size,), generator=g).tolist()
        prompt = size // 4
        out.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def _features(encoded, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    feats = []
    for e in encoded:
        n = sum(1 for label in e.labels[1:] if label != -100)
        feats.append({"gold": -torch.rand(n, 3, generator=g) * 3,
                      "argmax": torch.randint(0, 4, (n, 3), generator=g, dtype=torch.int32)})
    return feats


def _optim(**kwargs):
    """An OptimConfig with the fields this version of the code knows (the old one has no budget)."""
    from fusionroute.training import OptimConfig

    return OptimConfig(**{k: v for k, v in kwargs.items() if k in OptimConfig.__dataclass_fields__})


def worker_update(spec: dict) -> dict:
    """Share of weights that change in `steps` bf16 (or fp32) steps of router SFT at lr 1e-5."""
    import inspect

    import torch

    from fusionroute.data import collate
    from fusionroute.trainers import RoutingConfig, router_sft_loss
    from fusionroute.training import train_loop

    torch.set_num_threads(1)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[spec["dtype"]]
    router = _router(spec, dtype)
    data = _samples(16, spec["length"], spec["vocab"], 1)
    feats = _features(data, 2)
    before = {n: p.detach().float().clone() for n, p in router.named_parameters()}
    cfg = _optim(steps=spec["steps"], batch_size=4, lr=1e-5, seed=0)
    schedule = [[(4 * s + k) % len(data) for k in range(4)] for s in range(cfg.steps)]

    def micro_loss(micro, live):
        batch = collate([data[i] for i in micro], 0)
        return router_sft_loss(live["router"], batch, [feats[i] for i in micro], RoutingConfig())[0]

    kwargs = {"keep_master_weights": True} if "keep_master_weights" in inspect.signature(train_loop).parameters else {}
    began = time.perf_counter()
    result = train_loop({"router": router}, schedule, micro_loss, cfg, "bench update", **kwargs)
    seconds = time.perf_counter() - began
    saved = {n: p.detach().float() for n, p in router.named_parameters()}
    masters = {n[len("router."):]: w.float() for n, w in getattr(result, "master_weights", {}).items()}
    trained = {**saved, **masters}

    groups = {"routing head": lambda n: "routing_head" in n, "norm weights": lambda n: "norm" in n,
              "linear weights": lambda n: "proj" in n or "lm_head" in n,
              "all but embeddings": lambda n: "embed_tokens" not in n}

    def share(weights: dict) -> dict:
        out = {}
        for name, keep in groups.items():
            changed = sum(int((weights[n] != before[n]).sum()) for n in before if keep(n))
            total = sum(before[n].numel() for n in before if keep(n))
            out[name] = changed / total
        return out

    return {"trained": share(trained), "saved": share(saved), "has_masters": bool(masters), "seconds": seconds,
            "saved_dtype": str(next(router.parameters()).dtype)}


def worker_memory(spec: dict) -> dict:
    """Peak RSS above the loaded model during one training step (or the reference pass)."""
    import torch

    from fusionroute import trainers

    torch.set_num_threads(int(spec.get("threads", 1)))
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[spec["dtype"]]
    router = _router(spec, dtype)
    budget = spec.get("budget", 0)
    length, vocab, batch = spec["length"], spec["vocab"], spec["batch"]
    data = _samples(batch, length, vocab, 1)
    feats = _features(data, 2)
    pairs = [trainers.PreferencePair(a, b) for a, b in zip(_samples(batch, length, vocab, 3), _samples(batch, length, vocab, 4))]
    import gc

    gc.collect()
    base = _reset_peak()
    began = time.perf_counter()
    if spec["what"] == "sft":
        cfg = _optim(steps=1, batch_size=batch, lr=1e-5, seed=0, max_tokens_per_micro_batch=budget)
        trainers.train_router_sft(router, data, feats, cfg, trainers.RoutingConfig(), 0)
    elif spec["what"] == "mix":
        frozen = {k: torch.zeros(len(pairs)) for k in ("ref_chosen", "ref_rejected", "bias")}
        cfg = _optim(steps=1, batch_size=batch, lr=1e-5, seed=0, max_tokens_per_micro_batch=budget)
        trainers.mix_train(router, data, feats, pairs, frozen, cfg, trainers.MixConfig(), 0, "bench mix")
    elif spec["what"] == "reference":
        kwargs = {"max_tokens": budget} if budget else {}
        trainers.preference_reference(router, pairs, 0, 0.1, **kwargs)
    else:
        raise ValueError(spec["what"])
    seconds = time.perf_counter() - began
    peak = _status("VmHWM")
    return {"peak_mb": (peak - base) / 2**20, "seconds": seconds}


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    import fusionroute

    result = {"update": worker_update, "memory": worker_memory}[spec["kind"]](spec)
    result["code"] = str(Path(fusionroute.__file__).parent)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------


def extract_baseline(ref: str, into: Path) -> Path:
    """`git archive <ref> fusionroute` into `into` (read-only for the repository)."""
    archive = subprocess.run(["git", "archive", ref, "fusionroute"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_worker(code_root: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root), "FUSIONROUTE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=tempfile.gettempdir(),
                          env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    expected = code_root / "fusionroute"
    if Path(result["code"]).resolve() != expected.resolve():
        raise RuntimeError(f"worker imported {result['code']}, not {expected}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer steps")
    parser.add_argument("--baseline", default=BASELINE, help="commit of the old code (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="bf16 update steps (default 200, --quick 60)")
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0

    steps = args.steps or (60 if args.quick else 200)
    mem = dict(vocab=32000, hidden=128, layers=2, length=256 if args.quick else 512, batch=8)
    budget = mem["length"] * 2  # padded tokens per forward: two of the longest rows
    report: dict = {"baseline": args.baseline, "steps": steps, "memory_model": mem, "budget": budget}
    scratch = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        old_root = extract_baseline(args.baseline, scratch)
        new_root = ROOT
        print(f"old code: {args.baseline[:12]} (git archive into {old_root}); new code: {new_root}", flush=True)

        # 1. bf16 updates at lr 1e-5
        upd = dict(kind="update", vocab=512, hidden=64, layers=2, length=64, steps=steps)
        rows = {
            "old bf16": run_worker(old_root, {**upd, "dtype": "bfloat16"}),
            "new bf16": run_worker(new_root, {**upd, "dtype": "bfloat16"}),
            "new fp32 (reference)": run_worker(new_root, {**upd, "dtype": "float32"}),
        }
        report["update"] = rows
        groups = list(rows["old bf16"]["trained"])
        print(f"\n1. Share of weights changed after {steps} steps of router SFT at lr 1e-5 "
              f"(random Llama, hidden {upd['hidden']}, vocab {upd['vocab']})")
        print(f"{'run':34s}" + "".join(f"{g:>20s}" for g in groups) + f"{'seconds':>10s}")
        print(f"{'old bf16 (bf16 weights)':34s}" + "".join(f"{rows['old bf16']['trained'][g]:20.3f}" for g in groups)
              + f"{rows['old bf16']['seconds']:10.1f}")
        print(f"{'new bf16: fp32 master weights':34s}" + "".join(f"{rows['new bf16']['trained'][g]:20.3f}" for g in groups)
              + f"{rows['new bf16']['seconds']:10.1f}")
        print(f"{'new bf16: saved bf16 copy':34s}" + "".join(f"{rows['new bf16']['saved'][g]:20.3f}" for g in groups))
        print(f"{'fp32 world (reference)':34s}" + "".join(f"{rows['new fp32 (reference)']['trained'][g]:20.3f}" for g in groups)
              + f"{rows['new fp32 (reference)']['seconds']:10.1f}")
        print(f"saved dtype: old {rows['old bf16']['saved_dtype']}, new {rows['new bf16']['saved_dtype']}; "
              f"time new/old {rows['new bf16']['seconds'] / rows['old bf16']['seconds']:.2f}")

        # 2. peak memory of a training step
        print(f"\n2. Peak RSS above the loaded model, one step (router: hidden {mem['hidden']}, {mem['layers']} layers, "
              f"vocab {mem['vocab']}; {mem['batch']} samples (pairs) of up to {mem['length']} tokens, bf16 world)")
        print(f"{'step':12s}{'run':40s}{'peak MB':>10s}{'new/old':>9s}{'seconds':>9s}{'new/old':>9s}")
        report["memory"] = {}
        for what in ("sft", "mix", "reference"):
            base = dict(kind="memory", what=what, dtype="bfloat16", **mem)
            runs = {
                "old": run_worker(old_root, base),
                "new, no budget": run_worker(new_root, base),
                f"new, budget {budget} tokens": run_worker(new_root, {**base, "budget": budget}),
            }
            report["memory"][what] = runs
            ref = runs["old"]
            for name, r in runs.items():
                print(f"{what:12s}{name:40s}{r['peak_mb']:10.0f}{r['peak_mb'] / ref['peak_mb']:9.2f}"
                      f"{r['seconds']:9.1f}{r['seconds'] / ref['seconds']:9.2f}")
        control = dict(kind="memory", what="sft", dtype="float32", **mem)
        c_old, c_new = run_worker(old_root, control), run_worker(new_root, control)
        report["memory"]["sft_float32_control"] = {"old": c_old, "new": c_new}
        print(f"{'sft fp32':12s}{'old (float32 world, control)':40s}{c_old['peak_mb']:10.0f}{1:9.2f}{c_old['seconds']:9.1f}{1:9.2f}")
        print(f"{'sft fp32':12s}{'new (float32 world)':40s}{c_new['peak_mb']:10.0f}"
              f"{c_new['peak_mb'] / c_old['peak_mb']:9.2f}{c_new['seconds']:9.1f}{c_new['seconds'] / c_old['seconds']:9.2f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

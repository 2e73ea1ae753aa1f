"""DARE and TaskArithmetic merges of the experts' task vectors over their common base (mergekit).

Paper settings (Table 1): DARE with drop rate p = 0.9 and lambda = 1; TaskArithmetic with
lambda = 1. A task vector is `expert - base`; the merge is `base + lambda * sum_i tau_i` where
DARE first drops each entry of tau_i with probability p and rescales the survivors.

Rescaling (`params["rescale"]`):
- "dare" (default): DARE's own rule, survivors times 1 / (1 - p) = 1 / density, exactly. mergekit
  0.1.5 has no such switch, so we turn its rescale off and fold 1 / density into each model's
  `weight` (mergekit multiplies the *sparsified* delta by the weight, so this is exact).
- "l1": mergekit's `rescale: true`, which scales survivors so the delta keeps its L1 norm; equal to
  1 / density in expectation, not per tensor.

Randomness: DARE's Bernoulli masks come from torch's global RNG while mergekit executes its task
graph in a fixed order. `run_merge` seeds torch (and passes `random_seed` to mergekit, which seeds
python/numpy/torch again through transformers' `set_seed`) right before merging, so a seed
reproduces the merge bit for bit (tested).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from fusionroute.io import atomic_write_text, write_json

MERGE_METHODS = ("dare_linear", "task_arithmetic")
RESCALE_MODES = ("dare", "l1")


def merge_config(method: str, base: str, experts: list[str], params: dict[str, Any] | None = None) -> dict:
    """The mergekit YAML (as a dict) for merging `experts` over `base`.

    params (all optional):
      lambda   scale of the summed task vectors (paper: 1)
      density  DARE: share of each delta kept, 1 - p (paper: p = 0.9 -> 0.1)
      rescale  DARE: "dare" (x 1/density, exact) or "l1" (mergekit's L1-norm matching)
      weights  per-expert weights before lambda (default 1 each)
      dtype    merge dtype (float32 for the tiny world; bfloat16 for paper models)
      tokenizer_source  "base": mergekit aligns every model's vocabulary tensors to the base's
               tokenizer (needed when an expert appended tokens; the shared ids must already map
               token for token, see fusionroute.vocab)
    """
    params = dict(params or {})
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method must be one of {MERGE_METHODS}, got {method!r}")
    if not experts:
        raise ValueError("a merge needs at least one expert")
    unknown = set(params) - {"lambda", "density", "rescale", "weights", "dtype", "tokenizer_source"}
    if unknown:
        raise ValueError(f"unknown merge params {sorted(unknown)}")
    lam = float(params.get("lambda", 1.0))
    weights = [float(w) for w in params.get("weights", [1.0] * len(experts))]
    if len(weights) != len(experts):
        raise ValueError(f"{len(weights)} weights for {len(experts)} experts")
    method_params: dict[str, Any] = {"normalize": False}
    model_params: list[dict[str, Any]] = [{"weight": w} for w in weights]
    if method == "dare_linear":
        density = float(params.get("density", 0.1))
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}")
        rescale = params.get("rescale", "dare")
        if rescale not in RESCALE_MODES:
            raise ValueError(f"rescale must be one of {RESCALE_MODES}, got {rescale!r}")
        for p in model_params:
            p["density"] = density
            if rescale == "dare":
                p["weight"] = p["weight"] / density
        method_params["rescale"] = rescale == "l1"
    elif "density" in params or "rescale" in params:
        raise ValueError("density/rescale only apply to dare_linear")
    method_params["lambda"] = lam
    config = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(e), "parameters": p} for e, p in zip(experts, model_params)],
        "parameters": method_params,
        "dtype": params.get("dtype", "float32"),
    }
    if params.get("tokenizer_source"):
        config["tokenizer"] = {"source": params["tokenizer_source"]}
    return config


def run_merge(config: dict, out_dir: str, seed: int, copy_tokenizer_from: str | None = None,
              device: str = "cpu") -> Path:
    """Run mergekit on `config` into `out_dir`, seeded; copy the tokenizer; save the YAML there.

    Writes `out_dir/merge_config.yaml` (the exact config, for provenance) and
    `out_dir/merge_provenance.json` (seed, mergekit version). Offline: every model in `config`
    must be a local directory (or already in the HF cache). Experts whose vocabularies differ only
    by appended tokens (fusionroute.vocab's policy, checked by the caller) need
    `tokenizer_source: base` in the config (merge_config's param).
    """
    import mergekit
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run_merge
    from mergekit.options import MergeOptions

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False)
    merge_configuration = MergeConfiguration.model_validate(yaml.safe_load(text))
    options = MergeOptions(device=device, copy_tokenizer=True, random_seed=int(seed), lazy_unpickle=False,
                           write_model_card=True, safe_serialization=True, quiet=True,
                           allow_crimes=False)
    torch.manual_seed(int(seed))
    mergekit_run_merge(merge_configuration, out_path=str(out), options=options, config_source=text)
    if copy_tokenizer_from:
        # The world's tokenizer (a local directory or a hub id): loaded and saved, not copied as
        # files, so that a hub id works exactly like a directory.
        from fusionroute.models import load_tokenizer

        load_tokenizer(copy_tokenizer_from).save_pretrained(str(out))
    atomic_write_text(out / "merge_config.yaml", text)
    write_json(out / "merge_provenance.json", {"seed": int(seed), "mergekit_version": _version(mergekit),
                                              "tokenizer_from": str(copy_tokenizer_from) if copy_tokenizer_from else None,
                                              "config": config})
    return out


def _version(module) -> str:
    try:
        from importlib.metadata import version

        return version("mergekit")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return getattr(module, "__version__", "unknown")


def main(argv: list[str] | None = None) -> None:
    """CLI for the merge rule: python -m baselines.merges --method dare_linear --base B --experts E1 E2 ..."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=MERGE_METHODS)
    parser.add_argument("--base", required=True, help="the experts' common base model (dir or hub id)")
    parser.add_argument("--experts", required=True, nargs="+")
    parser.add_argument("--params", default="{}", help="JSON: lambda, density, rescale, weights, dtype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default=None, help="copy the tokenizer from here (default: the base)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    config = merge_config(args.method, args.base, args.experts, json.loads(args.params))
    run_merge(config, args.out, seed=args.seed, copy_tokenizer_from=args.tokenizer or args.base)


if __name__ == "__main__":
    main()

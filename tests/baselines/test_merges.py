"""mergekit DARE / TaskArithmetic merges on tiny random Llamas: exact arithmetic, sparsity, seeding."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from baselines.merges import merge_config, run_merge
from baseline_helpers import save_model, tiny_llama_config


def _state(directory) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


@pytest.fixture(scope="module")
def family(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("merge_family")
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config(tokenizer, hidden=32, layers=2))
    base_dir = save_model(base, tokenizer, root / "base")
    experts = []
    for k in range(3):
        expert = LlamaForCausalLM(base.config)
        expert.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in expert.parameters():
                p.add_(0.05 * torch.randn_like(p))
        experts.append(save_model(expert, tokenizer, root / f"expert{k}"))
    return base_dir, experts


def test_config_shapes():
    cfg = merge_config("dare_linear", "B", ["E1", "E2"], {})
    assert cfg["merge_method"] == "dare_linear" and cfg["base_model"] == "B"
    assert [m["parameters"] for m in cfg["models"]] == [{"weight": 10.0, "density": 0.1}] * 2
    assert cfg["parameters"] == {"normalize": False, "rescale": False, "lambda": 1.0}
    l1 = merge_config("dare_linear", "B", ["E1"], {"rescale": "l1"})
    assert l1["models"][0]["parameters"] == {"weight": 1.0, "density": 0.1} and l1["parameters"]["rescale"] is True
    ta = merge_config("task_arithmetic", "B", ["E1", "E2", "E3"], {"lambda": 1})
    assert [m["parameters"] for m in ta["models"]] == [{"weight": 1.0}] * 3
    with pytest.raises(ValueError):
        merge_config("ties", "B", ["E1"], {})
    with pytest.raises(ValueError):
        merge_config("task_arithmetic", "B", ["E1"], {"density": 0.1})


def test_task_arithmetic_is_base_plus_task_vectors(family, tmp_path, tok_dir):
    base_dir, experts = family
    out = run_merge(merge_config("task_arithmetic", base_dir, experts, {}), str(tmp_path / "ta"), seed=0,
                    copy_tokenizer_from=str(tok_dir))
    base, merged = _state(base_dir), _state(out)
    assert set(merged) == set(base)
    ex = [_state(e) for e in experts]
    for name, b in base.items():
        expected = b + sum(e[name] - b for e in ex)
        torch.testing.assert_close(merged[name], expected, atol=1e-5, rtol=1e-5)
    saved = yaml.safe_load((out / "merge_config.yaml").read_text())
    assert saved["merge_method"] == "task_arithmetic"
    _loads_and_generates(out)


def test_dare_single_expert_keeps_ten_percent_rescaled(family, tmp_path):
    base_dir, experts = family
    out = run_merge(merge_config("dare_linear", base_dir, experts[:1], {"density": 0.1}), str(tmp_path / "d1"),
                    seed=3, copy_tokenizer_from=base_dir)
    base, merged, expert = _state(base_dir), _state(out), _state(experts[0])
    kept = total = 0
    for name, b in base.items():
        tau = expert[name] - b
        delta = merged[name] - b
        nz = delta.abs() > 1e-7
        # every survivor is tau / density (DARE's rescale), every other entry is dropped
        torch.testing.assert_close(delta[nz], tau[nz] / 0.1, atol=1e-5, rtol=1e-4)
        kept += int(nz.sum())
        total += nz.numel()
        if nz.numel() >= 2000:
            assert abs(nz.float().mean().item() - 0.1) < 0.04, name
    assert abs(kept / total - 0.1) < 0.01
    _loads_and_generates(out)


def test_dare_three_experts_sum_of_sparse_rescaled_deltas(family, tmp_path):
    base_dir, experts = family
    out = run_merge(merge_config("dare_linear", base_dir, experts, {}), str(tmp_path / "d3"), seed=1,
                    copy_tokenizer_from=base_dir)
    base, merged = _state(base_dir), _state(out)
    taus = [{n: _state(e)[n] - base[n] for n in base} for e in experts]
    kept = total = 0
    for name, b in base.items():
        delta = merged[name] - b
        # each entry must be a sum over some subset of the experts' tau / density
        combos = torch.stack([sum((taus[i][name] / 0.1 for i in s), torch.zeros_like(b))
                              for r in range(4) for s in itertools.combinations(range(3), r)])
        assert (combos - delta).abs().min(0).values.max() < 1e-4, name
        kept += int((delta.abs() > 1e-7).sum())
        total += delta.numel()
    assert abs(kept / total - (1 - 0.9 ** 3)) < 0.02


def test_dare_l1_rescale_matches_norm(family, tmp_path):
    base_dir, experts = family
    out = run_merge(merge_config("dare_linear", base_dir, experts[:1], {"rescale": "l1"}), str(tmp_path / "l1"),
                    seed=0, copy_tokenizer_from=base_dir)
    base, merged, expert = _state(base_dir), _state(out), _state(experts[0])
    name = "model.embed_tokens.weight"
    tau, delta = expert[name] - base[name], merged[name] - base[name]
    nz = delta.abs() > 1e-7
    scale = (delta[nz] / tau[nz])
    assert torch.allclose(scale, scale[0].expand_as(scale), rtol=1e-3)  # one factor per tensor
    torch.testing.assert_close(delta.abs().sum(), tau.abs().sum(), rtol=1e-4, atol=1e-4)
    assert 7 < float(scale[0]) < 14  # ~ 1/density


def test_dare_same_seed_same_weights(family, tmp_path):
    base_dir, experts = family
    cfg = merge_config("dare_linear", base_dir, experts, {})
    a = _state(run_merge(cfg, str(tmp_path / "a"), seed=7, copy_tokenizer_from=base_dir))
    torch.manual_seed(12345)  # global RNG state before the call must not matter
    torch.rand(100)
    b = _state(run_merge(cfg, str(tmp_path / "b"), seed=7, copy_tokenizer_from=base_dir))
    c = _state(run_merge(cfg, str(tmp_path / "c"), seed=8, copy_tokenizer_from=base_dir))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def _loads_and_generates(directory):
    tok = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForCausalLM.from_pretrained(str(directory))
    ids = tok("Add 3 and 4.", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4 or int(out[0, -1]) == tok.eos_token_id


def test_cli_runs_a_merge_in_a_subprocess(family, tmp_path):
    import json
    import subprocess
    import sys

    base_dir, experts = family
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "baselines.merges", "--method", "task_arithmetic", "--base", base_dir,
                    "--experts", *experts[:2], "--params", json.dumps({"lambda": 0.5}), "--seed", "1",
                    "--out", str(out)], check=True, cwd=Path(__file__).resolve().parents[2], capture_output=True)
    saved = yaml.safe_load((out / "merge_config.yaml").read_text())
    assert saved["parameters"]["lambda"] == 0.5 and json.loads((out / "merge_provenance.json").read_text())["seed"] == 1
    base, merged, e0, e1 = _state(base_dir), _state(out), _state(experts[0]), _state(experts[1])
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(merged[name], base[name] + 0.5 * (e0[name] + e1[name] - 2 * base[name]), atol=1e-5, rtol=1e-5)
    assert (out / "tokenizer.json").exists()


def test_merge_step_takes_a_hub_tokenizer_and_runs_on_the_cpu(tmp_path, monkeypatch, tokenizer, tok_dir):
    """The merge rule gets a hub id for the tokenizer (paper configs) and asks SLURM for no GPU:
    the step must load the tokenizer through the hub path and merge on the CPU whatever `device`."""
    from baseline_helpers import save_model, tiny_llama_config
    from hf_cache import add_to_hub_cache
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM(tiny_llama_config(tokenizer))
    base_dir = save_model(base, tokenizer, tmp_path / "base")
    experts = []
    for k in range(2):
        expert = LlamaForCausalLM(tiny_llama_config(tokenizer))
        expert.load_state_dict(base.state_dict())
        with torch.no_grad():
            expert.lm_head.weight.add_(0.01 * (k + 1))
        experts.append(save_model(expert, tokenizer, tmp_path / f"expert{k}"))
    cache = tmp_path / "hf_cache"
    add_to_hub_cache(cache, "someorg/instruct-model", Path(base_dir))   # a model repo: config + weights + tokenizer
    out = tmp_path / "merged"
    params = {"seed": 0, "device": "cuda", "dtype": "float32", "merge": "task_arithmetic", "settings": {"weight": 1.0},
              "models": {"tokenizer": "someorg/instruct-model", "base": base_dir, "experts": experts}}
    # a fresh process: huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE when imported
    code = ("import json, sys; from fusionroute.steps import run_step; "
            "run_step('merge', {}, {'model': sys.argv[1]}, json.loads(sys.argv[2]))")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code, str(out), json.dumps(params)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = LlamaForCausalLM.from_pretrained(out)
    expected = base.lm_head.weight + 0.01 + 0.02
    assert torch.allclose(merged.lm_head.weight, expected, atol=1e-6)
    from fusionroute.models import load_tokenizer

    assert load_tokenizer(str(out)).get_vocab() == tokenizer.get_vocab()

"""Training options for large routers (fusionroute/scaling.py) on a tiny random Llama, CPU."""
from __future__ import annotations

import sys

import pytest
import torch

from fusionroute.scaling import (
    ScalingOptions,
    accelerate_command,
    finalize_for_saving,
    maybe_relaunch,
    prepare_for_training,
    trainable_parameters,
)


def _router(tokenizer, seed=0):
    from model_fixtures import make_llama

    from fusionroute.router import RouterModel

    return RouterModel.from_lm(make_llama(tokenizer, seed), ["math", "code", "instruct"], seed=seed)


def test_lora_and_checkpointing_router_trains_saves_loads(tokenizer, tmp_path):
    from fusionroute.router import RouterModel

    router = prepare_for_training(_router(tokenizer), {"gradient_checkpointing": True, "lora": {"r": 4, "alpha": 8}})
    named = {n: p for n, p in router.named_parameters() if p.requires_grad}
    assert "routing_head.weight" in named
    assert all("lora_" in n for n in named if n != "routing_head.weight") and len(named) > 1
    assert sum(p.numel() for p in named.values()) < 0.5 * sum(p.numel() for p in router.parameters())
    assert router.lm.base_model.model.model.gradient_checkpointing  # checkpointing is on

    frozen = {n: p.detach().clone() for n, p in router.named_parameters() if not p.requires_grad}
    before_head = router.routing_head.weight.detach().clone()
    optimizer = torch.optim.AdamW(trainable_parameters(router), lr=1e-2)
    router.train()
    ids = torch.randint(3, len(tokenizer), (2, 12))
    for _ in range(3):
        out = router(ids, torch.ones_like(ids))
        loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()) \
            + torch.nn.functional.cross_entropy(out.routing_logits.flatten(0, 1), torch.zeros(24, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in trainable_parameters(router))
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in router.named_parameters() if n in frozen)
    assert not torch.equal(router.routing_head.weight, before_head)

    router = finalize_for_saving(router).eval()
    assert type(router.lm).__name__ == "LlamaForCausalLM"  # LoRA merged: no PEFT left
    router.save_pretrained(tmp_path / "router")
    assert not (tmp_path / "router" / "adapter_config.json").exists()
    loaded = RouterModel.from_pretrained(tmp_path / "router").eval()
    with torch.no_grad():
        a, b = router(ids), loaded(ids)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.routing_logits, b.routing_logits, atol=1e-6)


def test_plain_lm_lora_merges_and_full_finetuning_is_untouched(tokenizer, tmp_path):
    from model_fixtures import make_llama
    from transformers import AutoModelForCausalLM

    lm = make_llama(tokenizer, 1)
    same = prepare_for_training(lm, {"gradient_checkpointing": False, "lora": None})
    assert same is lm and all(p.requires_grad for p in lm.parameters())
    peft_model = prepare_for_training(make_llama(tokenizer, 2), {"lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]}})
    assert type(peft_model).__name__ == "PeftModelForCausalLM"
    merged = finalize_for_saving(peft_model)
    merged.save_pretrained(tmp_path / "lm")
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "lm")).__name__ == "LlamaForCausalLM"


def test_options_validation_and_launcher(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match="unknown training options"):
        ScalingOptions.from_dict({"gradient_checkpoint": True})
    with pytest.raises(ValueError, match="launcher"):
        ScalingOptions.from_dict({"launcher": "torchrun"})
    with pytest.raises(ValueError, match="lora"):
        ScalingOptions.from_dict({"lora": {"rank": 8}})
    # python launcher (default): nothing is relaunched
    assert maybe_relaunch("router_sft", {}, {}, {"scaling": {}}, 1) is False
    assert maybe_relaunch("generate", {}, {}, {"scaling": {"launcher": "accelerate"}}, 1) is False
    opts = ScalingOptions.from_dict({"launcher": "accelerate", "accelerate_config": "config/accelerate/fsdp.yaml",
                                     "num_processes": 4})
    cmd = accelerate_command("job.json", opts)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and cmd[-3:] == ["fusionroute.steps", "run-step", "job.json"]


def test_relaunch_under_accelerate_runs_the_training_step(tmp_path, tokenizer, tokenizer_dir):
    """launcher: accelerate -> the step runs in a child started by `accelerate launch` (1 CPU process)."""
    from model_fixtures import make_llama

    from fusionroute.io import read_json, write_jsonl

    init = tmp_path / "init"
    make_llama(tokenizer, 0).save_pretrained(init)
    data = tmp_path / "sft.jsonl"
    write_jsonl(data, [{"instruction": f"Add {i} and 1.", "response": f"The answer is: {i + 1}"} for i in range(8)])
    config = tmp_path / "cpu.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nuse_cpu: true\n"
                      "mixed_precision: 'no'\nnum_machines: 1\nmachine_rank: 0\ndynamo_config: {}\n")
    params = {"seed": 0, "dtype": "float32", "device": "cpu", "max_len": 64,
              "prompt_template": "### Instruction:\n{instruction}\n\n### Response:\n",
              "models": {"tokenizer": str(tokenizer_dir), "init": str(init)},
              "optim": {"steps": 2, "batch_size": 2, "lr": 1e-3}, "desc": "relaunched",
              "scaling": {"launcher": "accelerate", "accelerate_config": str(config), "num_processes": 1}}
    outputs = {"model": str(tmp_path / "out"), "log": str(tmp_path / "log.json")}
    assert maybe_relaunch("finetune_lm", {"data": str(data)}, outputs, params, 1) is True
    assert read_json(outputs["log"])["summary"]["steps"] == 2
    assert (tmp_path / "out" / "config.json").exists()


def test_accelerate_configs_parse():
    """FSDP is the one multi-GPU config: precision is ours (no accelerate autocast, which would
    also turn the logits into an fp32 copy), every process loads full weights."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    assert sorted(p.name for p in (root / "config/accelerate").glob("*.yaml")) == ["fsdp.yaml"]
    cfg = yaml.safe_load(open(root / "config/accelerate/fsdp.yaml"))
    assert cfg["distributed_type"] == "FSDP" and cfg["mixed_precision"] == "no"
    assert cfg["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is False


def test_deepspeed_configs_are_refused(tmp_path):
    config = tmp_path / "zero3.yaml"
    config.write_text("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 3}\n")
    with pytest.raises(ValueError, match="DeepSpeed is not supported"):
        ScalingOptions.from_dict({"launcher": "accelerate", "accelerate_config": str(config)})
    opts = ScalingOptions(launcher="accelerate", accelerate_config=str(config))
    with pytest.raises(ValueError, match="FSDP"):
        accelerate_command("job.json", opts)


def test_fsdp_mixed_precision_policy():
    import torch

    from fusionroute.scaling import fsdp_mixed_precision

    assert fsdp_mixed_precision("float32") is None
    v1 = fsdp_mixed_precision("bfloat16", 1)
    assert v1 == {"param_dtype": torch.bfloat16, "reduce_dtype": torch.float32, "buffer_dtype": torch.float32}
    assert fsdp_mixed_precision("bfloat16", 2)["output_dtype"] == torch.bfloat16


def test_devices_outside_a_launch_are_the_configured_ones():
    from fusionroute.scaling import load_device, process_device, sharded

    assert process_device("cuda") == "cuda" and load_device("cpu") == "cpu" and not sharded()


def test_lora_by_size_unless_set_explicitly(tokenizer, capsys):
    from model_fixtures import make_llama

    n = sum(p.numel() for p in make_llama(tokenizer, 0).parameters())
    # over the threshold, lora not given: LoRA adapters (AUTO_LORA), and the log says why
    big = prepare_for_training(make_llama(tokenizer, 0), {"lora_above_params": n - 1})
    assert type(big).__name__ == "PeftModelForCausalLM" and big.peft_config["default"].r == 64
    line = capsys.readouterr().out
    assert "LoRA r=64 adapters" in line and "automatic" in line and "lora_above_params" in line
    # the same model with lora: null written out: full fine-tuning, saying so
    full = prepare_for_training(make_llama(tokenizer, 0), {"lora_above_params": n - 1, "lora": None})
    assert all(p.requires_grad for p in full.parameters())
    assert "full fine-tuning" in (line := capsys.readouterr().out) and "lora: null set" in line
    # under the threshold (the default 3e9 for these tiny models), or the rule switched off
    small = prepare_for_training(_router(tokenizer), {})
    assert all(p.requires_grad for p in small.parameters())
    assert "<= lora_above_params 3.00e+09" in capsys.readouterr().out
    off = prepare_for_training(make_llama(tokenizer, 0), {"lora_above_params": None})
    assert all(p.requires_grad for p in off.parameters())
    # a router over the threshold: adapters on its LM, the routing head fully trained
    router = prepare_for_training(_router(tokenizer), {"lora_above_params": 1000})
    assert type(router.lm).__name__ == "PeftModelForCausalLM" and router.routing_head.weight.requires_grad
    with pytest.raises(ValueError, match="lora_above_params"):
        ScalingOptions.from_dict({"lora_above_params": -1})
    with pytest.raises(ValueError, match="training.lora must be"):
        ScalingOptions.from_dict({"lora": "yes"})
    assert ScalingOptions.from_dict({"lora": "auto"}).lora == "auto"


def test_bf16_world_steps_train_lora_and_full_save_bf16_and_reuse_the_reference(tmp_path, tokenizer, tokenizer_dir, capsys):
    """The three training steps in a bfloat16 world: fp32 masters under bf16 autocast (with LoRA +
    gradient checkpointing for the router, full fine-tuning for the LM), models saved in bf16,
    the mix step's reference log-probs stored next to the output and reused by a rerun."""
    from model_fixtures import make_llama
    from safetensors.torch import load_file

    import torch

    from fusionroute.data import encode_pair
    from fusionroute.features import save_features
    from fusionroute.io import read_json, write_jsonl
    from fusionroute.steps import run_step

    template = "### Instruction:\n{instruction}\n\n### Response:\n"
    init = tmp_path / "init"
    make_llama(tokenizer, 0).to(torch.bfloat16).save_pretrained(init)
    sft_rows = [{"instruction": f"Add {i} and 1.", "response": f"The answer is: {i + 1}" + " ok" * (i % 3)} for i in range(8)]
    pref_rows = [{"instruction": f"Add {i} and 2.", "chosen": f"The answer is: {i + 2}", "rejected": f"It is {i}"}
                 for i in range(6)]
    write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    write_jsonl(tmp_path / "pref.jsonl", pref_rows)

    def fake(records, response):
        g = torch.Generator().manual_seed(0)
        out = []
        for r in records:
            e = encode_pair(tokenizer, template.replace("{instruction}", r["instruction"]), r[response], 64)
            n = sum(1 for label in e.labels[1:] if label != -100)
            out.append({"gold": -torch.rand(n, 3, generator=g), "argmax": torch.randint(0, 3, (n, 3), generator=g, dtype=torch.int32)})
        return out

    save_features(tmp_path / "f_sft.pt", fake(sft_rows, "response"), {})
    save_features(tmp_path / "f_pref.pt", [{"chosen": c, "rejected": r} for c, r in
                                           zip(fake(pref_rows, "chosen"), fake(pref_rows, "rejected"))], {})
    common = {"seed": 0, "dtype": "bfloat16", "device": "cpu", "max_len": 64, "prompt_template": template}
    optim = {"steps": 2, "batch_size": 4, "lr": 1e-3, "max_tokens_per_micro_batch": 64}
    models = {"tokenizer": str(tokenizer_dir), "init": str(init)}
    lora = {"gradient_checkpointing": True, "lora": {"r": 4, "alpha": 8}}
    run_step("router_sft", {"sft": str(tmp_path / "sft.jsonl"), "features": str(tmp_path / "f_sft.pt")},
             {"model": str(tmp_path / "rs"), "log": str(tmp_path / "rs.json")},
             {**common, "models": models, "expert_names": ["a", "b", "c"], "optim": optim, "lam": 1 / 3,
              "reading": "literal", "scaling": lora})
    run_step("finetune_lm", {"data": str(tmp_path / "sft.jsonl")}, {"model": str(tmp_path / "ft"), "log": str(tmp_path / "ft.json")},
             {**common, "models": models, "optim": optim, "scaling": {"lora": None}})
    mix = {**common, "optim": {**optim, "reference_batch_size": 2}, "lam": 1 / 3, "beta": 0.1, "n_sft": 4, "n_pref": 4,
           "reading": "literal", "scaling": lora, "policy": "router", "models": {**models, "init": str(tmp_path / "rs")}}
    mix_inputs = {"sft": str(tmp_path / "sft.jsonl"), "preferences": str(tmp_path / "pref.jsonl"),
                  "sft_features": str(tmp_path / "f_sft.pt"), "pref_features": str(tmp_path / "f_pref.pt")}
    outputs = {"model": str(tmp_path / "rm"), "log": str(tmp_path / "rm.json")}
    run_step("mix_train", mix_inputs, outputs, mix)
    first = capsys.readouterr().out
    assert "fp32 master weights" in first and "bfloat16 autocast" in first
    assert "computing the reference log-probs of 4 pairs once" in first
    for name in ("rs", "ft", "rm"):
        weights = load_file(tmp_path / name / "model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}, name
    assert load_file(tmp_path / "rm" / "routing_head.safetensors")["weight"].dtype == torch.bfloat16
    assert read_json(outputs["log"])["log"][-1]["forwards"] >= 2
    ref = tmp_path / "rm.ref_logprobs.pt"
    assert ref.exists()
    run_step("mix_train", mix_inputs, outputs, mix)  # a rerun (or a resumed job): no reference pass
    assert "reusing" in capsys.readouterr().out

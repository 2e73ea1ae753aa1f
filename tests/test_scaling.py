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
    assert cmd[cmd.index("--num_processes") + 1] == "4" and cmd[-3:] == ["fusionroute.scaling", "run-step", "job.json"]


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
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    for name, kind in (("fsdp", "FSDP"), ("deepspeed_zero3", "DEEPSPEED")):
        cfg = yaml.safe_load(open(root / f"config/accelerate/{name}.yaml"))
        assert cfg["distributed_type"] == kind and cfg["mixed_precision"] == "bf16"

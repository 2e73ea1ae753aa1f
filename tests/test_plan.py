"""The planner (fusionroute.plan): its memory formulas against the MEASURED peak memory of the same
steps on small models, its refusals, and its verdict on config/paper.yaml.

How memory is measured. CPU only, so no torch.cuda.max_memory_allocated: the same quantity is
read from the PyTorch profiler (`profile_memory=True`), whose allocation events record every
allocation and free of the CPU allocator, inside ops and in the autograd engine alike; the running
sum of their sizes peaks at the step's peak of live tensor bytes above what existed when the
profile started (the model's weights, added from their storage sizes). This is exact and
deterministic (checked on known allocations below), unlike a process RSS (allocator caching,
glibc arenas, page faults) and unlike a dispatch-mode tensor tracker (which misses temporaries
inside kernels). Tolerance: the estimate must lie within [MEASURED / 1.15, 1.5 x MEASURED];
the formulas are built to err on the high side.

Each case runs the project's own step code: fusionroute.trainers (train_lm, train_router_sft,
mix_train, preference_reference) with fusionroute.scaling's LoRA and checkpointing, the
features' ExpertRunner, fusionroute.decoding (greedy_generate, fused_generate) and
baselines.collab / baselines.sequence_selection, on Llama and Gemma-2 layers. The output layer
is tiny here, so the tests shrink losses.LOGPROB_CHUNK_ELEMENTS (and tell the planner) to take
the chunked log-prob path every real (8B, 2B) model takes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fusionroute import plan

REPO = Path(__file__).resolve().parents[1]
LOW, HIGH = 1 / 1.15, 1.5
CHUNK = 1 << 16        # elements per log-prob chunk in the tests (the models' logits are small)
RESULTS: list[str] = []  # measured vs estimated, printed at the end of the module (pytest -s)


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------


def measure_peak(fn, alive: int = 0) -> int:
    """Peak bytes of live CPU tensors while `fn` runs, plus `alive` (what existed before)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes = []

    def walk(event):
        if event.tag == _EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
        for child in event.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    current = peak = 0
    for _, size in sorted(sizes):
        current += size
        peak = max(peak, current)
    return peak + alive


def storage_bytes(*modules) -> int:
    seen, total = set(), 0
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
    return total


def check(name: str, measured: float, estimate: plan.Estimate) -> None:
    ratio = estimate.peak / measured
    RESULTS.append(f"{name:58s} measured {measured / 2**20:8.2f} MiB  estimated {estimate.peak / 2**20:8.2f} MiB  "
                   f"x{ratio:.2f}  [{estimate.phase}]")
    assert LOW <= ratio <= HIGH, (f"{name}: estimate {estimate.peak / 2**20:.2f} MiB vs measured "
                                  f"{measured / 2**20:.2f} MiB (x{ratio:.2f}); parts "
                                  + ", ".join(f"{k} {v / 2**20:.2f}" for k, v in estimate.parts.items()))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if RESULTS:
        print("\nplanner vs measured peak memory (tests/test_plan.py):\n" + "\n".join(RESULTS))


def test_measurement_is_exact_on_known_allocations():
    def fn():
        a = torch.empty(1_000_000)          # 4 MB
        b = torch.empty(500_000)            # 2 MB
        del a
        c = torch.empty(3_000_000)          # 12 MB: peak 14 MB
        del b, c

    assert measure_peak(fn) == 14_000_000
    w = torch.randn(256, 1024, requires_grad=True)
    x = torch.randn(64, 256)
    # forward: x @ w (64 x 1024 fp32) and its relu; backward: w.grad (1 MiB) and the relu mask grads
    assert measure_peak(lambda: (x @ w).relu().sum().backward()) >= 256 * 1024 * 4


# ----------------------------------------------------------------------------------------------
# small models
# ----------------------------------------------------------------------------------------------


def tiny(layout: str, dtype: str, hidden=128, layers=4, heads=4, kv=2, head_dim=32, inter=352, vocab=8000,
         positions=1024):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                  max_position_embeddings=positions)
    if layout == "gemma2":
        config = Gemma2Config(**common, sliding_window=4096)
        model = Gemma2ForCausalLM(config)
    else:
        config = LlamaConfig(**common, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    model = model.to(getattr(torch, dtype)).eval()
    return model, plan.shape_from_config(f"tiny-{layout}", config, "test")


def samples(n: int, length: int, vocab: int, seed: int, prompt: int = 16):
    from fusionroute.data import Encoded

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append(Encoded(ids, [-100] * prompt + ids[prompt:]))
    return out


SMALL = dict(vocab=4000, layers=2)
LONG = dict(vocab=1000, inter=512, layers=2)
TRAIN_CASES = {
    # id: (layout, dtype, lora, checkpointing, step, rows, length, model kwargs); bf16 matmuls are
    # slow on a CPU, so those models are smaller
    "llama fp32 full, no checkpointing": ("llama", "float32", False, False, "lm", 4, 128, dict(vocab=4000)),
    "llama fp32 LoRA, checkpointing": ("llama", "float32", True, True, "lm", 4, 128, dict(vocab=4000)),
    "llama bf16 full (fp32 masters), checkpointing": ("llama", "bfloat16", False, True, "lm", 2, 128, SMALL),
    "llama bf16 LoRA router SFT, checkpointing": ("llama", "bfloat16", True, True, "router", 2, 128, SMALL),
    "llama bf16 LoRA mix (pairs), checkpointing": ("llama", "bfloat16", True, True, "mix", 1, 128, SMALL),
    "llama fp32 long rows (layers dominate), checkpointing": ("llama", "float32", False, True, "lm", 2, 512, LONG),
    "gemma2 bf16 full router SFT, checkpointing": ("gemma2", "bfloat16", False, True, "router", 2, 128, SMALL),
    "gemma2 fp32 LoRA, no checkpointing": ("gemma2", "float32", True, False, "lm", 2, 128, {}),
    "gemma2 fp32 full mix (pairs), no checkpointing": ("gemma2", "float32", False, False, "mix", 2, 128, {}),
    "gemma2 fp32 long rows (eager scores), checkpointing": ("gemma2", "float32", False, True, "lm", 2, 512, LONG),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_training_step_memory(case, monkeypatch):
    """Two optimiser steps of two micro-batches (so gradients and AdamW states exist while the
    last micro-batch runs): the planner's TrainSetting for the same micro-batch."""
    from fusionroute import losses, trainers
    from fusionroute.router import RouterModel
    from fusionroute.scaling import prepare_for_training
    from fusionroute.training import OptimConfig

    layout, dtype, lora, gc, step, rows, length, kw = TRAIN_CASES[case]
    monkeypatch.setattr(losses, "LOGPROB_CHUNK_ELEMENTS", CHUNK)
    model, shape = tiny(layout, dtype, **kw)
    lora_spec = {"r": 8} if lora else None
    experts = 3
    if step == "router" or (step == "mix" and layout == "llama"):
        model = RouterModel.from_lm(model, ["a", "b", "c"])
    router = isinstance(model, RouterModel)
    model = prepare_for_training(model, {"gradient_checkpointing": gc, "lora": lora_spec})
    data = samples(2 * rows, length, shape.vocab, 1)
    cfg = OptimConfig(steps=2, batch_size=2 * rows, micro_batch_size=rows, lr=1e-4)
    alive = storage_bytes(model)
    if step == "lm":
        run = lambda: trainers.train_lm(model, data, cfg, 0, "plan test")  # noqa: E731
    elif step == "router":
        feats = [{"gold": -torch.rand(length - 16, experts),
                  "argmax": torch.randint(0, 4, (length - 16, experts), dtype=torch.int32)} for _ in data]
        run = lambda: trainers.train_router_sft(model, data, feats, cfg, trainers.RoutingConfig(), 0)  # noqa: E731
    else:  # every sample a preference pair: 2 rows each, the planner's worst case
        pairs = [trainers.PreferencePair(a, b) for a, b in zip(data, samples(2 * rows, length, shape.vocab, 2))]
        frozen = {k: torch.zeros(len(pairs)) for k in ("ref_chosen", "ref_rejected", "bias")}
        run = lambda: trainers.mix_train(model, [], [] if router else None, pairs, frozen, cfg,  # noqa: E731
                                         trainers.MixConfig(), 0, "plan test")
    measured = measure_peak(run, alive)
    setting = plan.TrainSetting(dtype=dtype, lora=lora_spec, gradient_checkpointing=gc,
                                rows=rows * (2 if step == "mix" else 1), seq_len=length,
                                router_experts=experts if router else 0, logprob_chunk_elements=CHUNK, foreach=False)
    check(f"train: {case}", measured, plan.train_memory(shape, setting))


@pytest.mark.parametrize("layout,dtype,length,budget,kw", [
    ("llama", "bfloat16", 256, 2048, {}),
    ("llama", "float32", 128, 4096, dict(vocab=16000)),
    ("gemma2", "bfloat16", 512, 2048, dict(vocab=1000, inter=512)),
    ("gemma2", "float32", 256, 2048, {}),
])
def test_expert_features_memory(layout, dtype, length, budget, kw):
    from fusionroute.features import ExpertRunner

    model, shape = tiny(layout, dtype, **kw)
    data = samples(2 * budget // length, length, shape.vocab, 3)
    chunk_bytes = 1 << 20
    measured = measure_peak(lambda: ExpertRunner(model, shape.vocab, chunk_bytes).run(data, 0, budget),
                            storage_bytes(model))
    check(f"features: {layout} {dtype} {budget // length}x{length}", measured,
          plan.features_memory(shape, dtype, budget, length, chunk_bytes))


@pytest.mark.parametrize("layout,dtype,router,chunk", [
    ("llama", "bfloat16", True, CHUNK),
    ("llama", "float32", False, CHUNK),
    ("gemma2", "bfloat16", True, CHUNK),
    ("gemma2", "bfloat16", False, 1 << 25),   # small logits: one fp32 copy (losses.gather_logprobs)
])
def test_reference_pass_memory(layout, dtype, router, chunk, monkeypatch):
    from fusionroute import losses, trainers
    from fusionroute.router import RouterModel

    monkeypatch.setattr(losses, "LOGPROB_CHUNK_ELEMENTS", chunk)
    model, shape = tiny(layout, dtype)
    if router:
        model = RouterModel.from_lm(model, ["a", "b", "c"]).eval()
    length, pairs_per_batch = 256, 4
    data = samples(4 * pairs_per_batch, length, shape.vocab, 4)
    pairs = [trainers.PreferencePair(a, b) for a, b in zip(data[::2], data[1::2])]
    feats = ([{side: {"gold": -torch.rand(length - 16, 3)} for side in ("chosen", "rejected")} for _ in pairs]
             if router else None)
    measured = measure_peak(lambda: trainers.preference_reference(model, pairs, 0, 0.1, feats,
                                                                  batch_size=pairs_per_batch), storage_bytes(model))
    check(f"reference pass: {layout} {dtype} {'router' if router else 'LM'} chunk {chunk}", measured,
          plan.reference_pass_memory(shape, 2 * pairs_per_batch, length, dtype, router, chunk))


@pytest.mark.parametrize("layout,dtype,kind,rows,prompt,new", [
    ("llama", "bfloat16", "single", 8, 384, 8),
    ("gemma2", "float32", "single", 4, 128, 8),
    ("llama", "float32", "fusionroute", 4, 128, 8),
    ("gemma2", "bfloat16", "fusionroute", 4, 384, 4),
])
def test_decode_memory(layout, dtype, kind, rows, prompt, new):
    from fusionroute.decoding import fused_generate, greedy_generate
    from fusionroute.router import RouterModel

    model, shape = tiny(layout, dtype, positions=prompt + new + 8)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, shape.vocab, (prompt - 3 * k,), generator=g).tolist() for k in range(rows)]
    if kind == "single":
        measured = measure_peak(lambda: greedy_generate(model, prompts, new, None, 0), storage_bytes(model))
        models = {"model": shape}
    else:
        experts = [tiny(layout, dtype, positions=prompt + new + 8)[0] for _ in range(3)]
        router = RouterModel.from_lm(model, ["a", "b", "c"]).eval()
        measured = measure_peak(lambda: fused_generate(router, experts, prompts, new, None, 0),
                                storage_bytes(router, *experts))
        models = {"router": shape, **{f"expert:{k}": shape for k in range(3)}}
    check(f"decode: {kind} {layout} {dtype} {rows}x({prompt}+{new})", measured,
          plan.decode_memory(models, plan.DecodeSetting(kind, rows, prompt, new, dtype)))


def _collect_after(monkeypatch, owner, name: str) -> None:
    """Run Python's cycle collector after each call of `owner.name` (see below)."""
    import gc

    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        gc.collect()
        return out

    monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.parametrize("kind", ["collab", "sequence_selection"])
def test_reward_model_methods_memory(kind, tokenizer, monkeypatch):
    """Collab (expert caches, forked lookahead caches, the reward model over every candidate) and
    Sequence Selection, with a real tokenizer and reward model.

    The decoders' KV caches (fusionroute.decoding.cache._RowCache) form a reference cycle (each layer
    points back at its cache), so a cache that a call drops is freed only when Python's cycle
    collector runs, not when the call returns; Collab then holds several forked lookahead caches
    at once. The plan counts a dropped cache as freed (what breaking the cycle gives), so this
    test collects after each lookahead / each expert's decode; see
    test_dropped_decode_caches_are_freed_at_once."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    import baselines.collab
    import baselines.sequence_selection
    from baselines.collab import Collab, CollabParams
    from baselines.reward import RewardScorer
    from baselines.sequence_selection import SequenceSelection
    from fusionroute.data import render_prompt

    template = "### Instruction:\n{instruction}\n\n### Response:\n"
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    experts = [LlamaForCausalLM(LlamaConfig(**common)).eval() for _ in range(3)]
    rm = LlamaForSequenceClassification(LlamaConfig(**common, num_labels=1)).eval()
    scorer = RewardScorer(rm, tokenizer, prompt_template=template)
    words = "Tom has 3 apples and buys 4 more; write a function add_two(x) that returns x plus 2. "
    prompts = [render_prompt(template, words * (6 - k)) for k in range(4)]
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in prompts)
    new, top_k, lookahead = 6, 2, 2
    if kind == "collab":
        _collect_after(monkeypatch, baselines.collab._CachedExperts, "lookahead")
        gen = Collab(experts, tokenizer, scorer, CollabParams(top_k=top_k, lookahead=lookahead), template)
    else:
        _collect_after(monkeypatch, baselines.sequence_selection, "greedy_with_steps")
        gen = SequenceSelection(experts, tokenizer, scorer, template)
    with torch.no_grad():
        measured = measure_peak(lambda: gen.generate(prompts, new), storage_bytes(rm, *experts))
    shape = plan.shape_from_config("tiny expert", experts[0].config, "test")
    models = {**{f"expert:{k}": shape for k in range(3)},
              "reward": replace(plan.shape_from_config("tiny rm", rm.config, "test"), lm_head=False)}
    setting = plan.DecodeSetting(kind, len(prompts), longest, new, "float32", top_k, lookahead)
    check(f"decode: {kind} llama fp32 4x({longest}+{new})", measured, plan.decode_memory(models, setting))


def test_dropped_decode_caches_are_freed_at_once():
    """The plan assumes a decode's KV caches are freed when it returns, not at the next cycle
    collection (the layers hold their cache by a weak reference)."""
    import gc
    import weakref

    from fusionroute.decoding import decoders as decoding

    model, shape = tiny("llama", "float32", layers=2)
    caches = []
    original = decoding._RowCache.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        caches.append(weakref.ref(self))

    gc.disable()
    try:
        decoding._RowCache.__init__ = spy
        with torch.no_grad():
            decoding.greedy_generate(model, [[5, 6, 7, 8]] * 2, 4, None, 0)
        alive = sum(ref() is not None for ref in caches)
    finally:
        decoding._RowCache.__init__ = original
        gc.enable()
    assert caches and alive == 0, f"{alive} of {len(caches)} KV caches outlive greedy_generate"


# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------


def test_built_in_shapes_have_the_published_sizes():
    sizes = {"meta-llama/Llama-3.1-8B-Instruct": 8.03e9, "google/gemma-2-2b-it": 2.61e9,
             "Ray2333/reward-model-Mistral-7B-instruct-Unified-Feedback": 7.11e9, "weqweasdas/RM-Gemma-2B": 2.51e9,
             "MergeBench/Llama-3.1-8B-Instruct_math": 8.03e9, "MergeBench/gemma-2-2b-it_coding": 2.61e9}
    for name, size in sizes.items():
        shape = plan.resolve_shape(name)
        assert abs(shape.params() - size) / size < 0.005, (name, shape.params())
        assert "built-in table" in shape.source or "HF cache" in shape.source
    # LoRA r=64 on every projection of Llama-3.1-8B: 168M adapter weights (PEFT's count)
    llama = plan.resolve_shape("meta-llama/Llama-3.1-8B-Instruct")
    assert llama.lora_params(64, plan.DEFAULT_LORA_TARGETS) == 167_772_160


def test_shape_from_a_local_directory_and_unknown_models(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(tmp_path)
    shape = plan.resolve_shape(str(tmp_path))
    assert (shape.hidden, shape.layers, shape.kv_heads, shape.head_dim, shape.vocab) == (64, 3, 2, 16, 500)
    assert shape.source == f"local {tmp_path / 'config.json'}"
    with pytest.raises(LookupError, match="--model-config"):
        plan.resolve_shape("nobody/unknown-model-xyz")


# ----------------------------------------------------------------------------------------------
# the paper's plan, refusals, the CLI
# ----------------------------------------------------------------------------------------------

PAPER = REPO / "config" / "paper.yaml"
PROFILE = REPO / "profiles" / "slurm"
# config/paper.yaml and profiles/slurm carry the settings the planner asked for. Each entry undoes
# one of them (the value the configs had before) and names the misfit that then comes back and the
# setting the refusal must name.
UNDONE_FIXES = [
    ({}, {"expert_features": {"gpu": 1}}, ("expert_features", "llama3", ""), "give it gpu: 2"),
    ({}, {"generate": {"runtime": 720}}, ("generate", "llama3", "collab"), "collab.limit"),
    ({"generation": {"batch_size": 16}}, {}, ("generate", "llama3", "fusionroute"), "generation.batch_size: 8"),
    ({"generation": {"batch_size": 16}}, {}, ("generate", "llama3", "fusionroute_sft"), "generation.batch_size: 8"),
    ({"fusionroute": {"sft": {"micro_batch_size": 16}}}, {}, ("router_sft", "gemma2", ""),
     "fusionroute.sft.micro_batch_size: 8"),
    ({"finetuned": {"sft": {"micro_batch_size": 16}}}, {}, ("finetuned_sft", "gemma2", ""),
     "finetuned.sft.micro_batch_size: 8"),
    ({"fusionroute": {"mix": {"micro_batch_size": 8}}}, {}, ("router_mix", "gemma2", ""),
     "fusionroute.mix.micro_batch_size: 4"),
    ({"finetuned": {"mix": {"micro_batch_size": 8}}}, {}, ("finetuned_mix", "gemma2", ""),
     "finetuned.mix.micro_batch_size: 4"),
    ({"fusionroute": {"mix": {"reference_batch_size": 16}}}, {}, ("router_mix", "gemma2", ""),
     "fusionroute.mix.reference_batch_size: 8"),
]


def paper_planner(config_changes: dict | None = None, profile_changes: dict | None = None) -> plan.Planner:
    config = plan._deep_merge(plan.load_config([str(PAPER)]), config_changes or {})
    profile = plan.load_profile(str(PROFILE))
    for rule, res in (profile_changes or {}).items():
        profile[rule] = {**profile[rule], **res}
    return plan.Planner(config, profile, plan.Hardware(), plan.Assumptions())


def _key(row: plan.Row) -> tuple[str, str, str]:
    return row.rule, row.family, row.what.split(" [")[0] if row.rule == "generate" else ""


def test_paper_plan_fits_as_shipped():
    """Every rule of config/paper.yaml fits one 80 GB GPU (92% usable) and its profile time limit."""
    rows = paper_planner().rows()
    assert [(_key(r), r.problems) for r in rows if not r.fits] == []
    gpu_rows = [r for r in rows if r.gpu_gib is not None]
    assert gpu_rows and all(r.gpu_gib <= 0.92 * 80 for r in gpu_rows)
    assert {r.rule for r in rows} >= {"expert_features", "router_sft", "router_mix", "finetuned_sft", "finetuned_mix",
                                      "generate", "merge"}


@pytest.mark.parametrize("config_changes,profile_changes,key,setting", UNDONE_FIXES,
                         ids=[f"{k[0]}-{k[1]}-{s}" for _, _, k, s in UNDONE_FIXES])
def test_each_shipped_setting_is_needed(config_changes, profile_changes, key, setting):
    """Undoing one shipped setting brings back exactly the misfit it fixed, and the refusal names it."""
    rows = paper_planner(config_changes, profile_changes).rows()
    misfit = {_key(r): r for r in rows if not r.fits}
    assert key in misfit, sorted(misfit)
    assert setting in " ".join(misfit[key].problems), misfit[key].problems


def test_refusal_names_the_rule_and_the_setting():
    """Full fine-tuning of the 8B router on one 80 GB GPU (the paper's setting without LoRA)."""
    rows = paper_planner({"families": {"llama3": {"training": {"lora": None}}}}).rows()
    row = next(r for r in rows if r.rule == "router_sft" and r.family == "llama3")
    assert not row.fits and row.gpu_gib > 100
    message = " ".join(row.problems)
    assert "one 80 GiB GPU" in message
    assert "families.llama3.training.lora" in message and "launcher: accelerate" in message
    # and the FSDP alternative it names fits: N processes, the profile giving router_sft N GPUs
    import re

    n = int(re.search(r"training.num_processes: (\d+)", message).group(1))
    changes = {"families": {"llama3": {"training": {"lora": None}}},
               "training": {"launcher": "accelerate", "num_processes": n}}
    rows = paper_planner(changes, {"router_sft": {"gpu": n}}).rows()
    row = next(r for r in rows if r.rule == "router_sft" and r.family == "llama3")
    assert row.fits and "FSDP" in row.what, row.problems


def test_time_formulas():
    shape = plan.resolve_shape("meta-llama/Llama-3.1-8B-Instruct")
    tokens = 1e6
    full = plan.train_flops(shape, tokens, 0, lora=False, checkpointing=False)
    assert full == pytest.approx(6 * shape.matmul_params() * tokens)
    assert plan.train_flops(shape, tokens, 0, lora=True, checkpointing=True) == pytest.approx(full)  # 4 + 2
    hw = plan.Hardware()
    # a decoding step at batch 1 reads the 16 GB of weights: bandwidth-bound, plus launch overhead
    step = plan.forward_seconds(shape, hw, 1, 1, 100, 2)
    assert step == pytest.approx(shape.params() * 2 / hw.bandwidth + 32 * 0.4e-3, rel=0.01)
    # a 2048-token prefill of 16 rows is compute-bound
    assert plan.forward_seconds(shape, hw, 16, 2048, 0, 2) > 16 * 2048 * 2 * shape.matmul_params() / hw.flops


def offline_env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    return env


def test_cli_on_the_paper_config_offline(tmp_path):
    out_md, out_json = tmp_path / "plan.md", tmp_path / "plan.json"
    result = subprocess.run([sys.executable, "-m", "fusionroute.plan", "--configfile", str(PAPER), "--profile",
                             str(PROFILE), "--markdown", str(out_md), "--json", str(out_json)],
                            cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=300)
    misfits = [r for r in paper_planner().rows() if not r.fits]
    assert result.returncode == (1 if misfits else 0), result.stderr[-3000:]
    assert "| router_sft | llama3 |" in result.stdout and "built-in table" in result.stdout
    for row in misfits:
        assert f"[plan] {row.label}: {row.problems[0]}" in result.stderr
    assert out_md.read_text() == result.stdout
    payload = json.loads(out_json.read_text())
    assert {r["rule"] for r in payload["rows"]} >= {"expert_features", "router_sft", "router_mix", "finetuned_sft",
                                                    "finetuned_mix", "generate", "merge"}
    assert payload["shapes"]["llama3:instruction"]["hidden"] == 4096
    again = subprocess.run([sys.executable, "-m", "fusionroute.plan", "--configfile", str(PAPER), "--no-fail"],
                           cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0


def test_snakemake_target(tmp_path):
    """workflow/rules/plan.smk: `results/<world>/plan.md` and `plan.json` (dry-run; the Snakefile of a
    scratch copy includes the rule file)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from workflow_helpers import SNAKEMAKE, copy_workflow

    work = copy_workflow(tmp_path / "wf")
    snakefile = work / "Snakefile"
    if 'include: "workflow/rules/plan.smk"' not in snakefile.read_text():
        snakefile.write_text(snakefile.read_text() + '\ninclude: "workflow/rules/plan.smk"\n')
    result = subprocess.run(SNAKEMAKE + ["-n", "results/paper/plan.md", "--configfile", "config/paper.yaml"],
                            cwd=work, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "rule plan:" in result.stdout or "localrule plan:" in result.stdout

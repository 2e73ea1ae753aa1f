"""Expert features (fusionroute/features.py) against the old implementation, on tiny random models:
same numbers, no whole [batch, length, vocab] logits, resumable shards, split over processes."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_fixtures import make_llama
import fusionroute.features as F
from fusionroute.data import Encoded, encode_pair
from fusionroute.features import (
    SINGLE_PART,
    ExpertRunner,
    ExpertSource,
    FeatureSet,
    compute_expert_features,
    compute_feature_files,
    load_features,
    token_budget_batches,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "### Instruction:\n{}\n\n### Response:\n"
WORDS = "tom has three apples cats are small the answer is seven def add_two return x plus".split()


def _legacy():
    spec = importlib.util.spec_from_file_location("bench_features", REPO / "scripts" / "bench_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.legacy_compute_expert_features


legacy_compute_expert_features = _legacy()


def _samples(tokenizer, n: int, seed: int = 0, max_len: int = 64) -> list[Encoded]:
    """Prompts and responses of very different lengths (some truncated at max_len), in no order."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
        out.append(encode_pair(tokenizer, TEMPLATE.format(prompt), response, max_len))
    return out


def _assert_same(new, old, atol=1e-5):
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a["gold"].dtype == b["gold"].dtype == torch.float32
        assert a["argmax"].dtype == b["argmax"].dtype == torch.int32
        assert a["gold"].shape == b["gold"].shape and a["argmax"].shape == b["argmax"].shape
        assert torch.allclose(a["gold"], b["gold"], atol=atol, rtol=0), (a["gold"] - b["gold"]).abs().max()
        assert torch.equal(a["argmax"], b["argmax"])


@pytest.fixture(scope="module")
def experts(tokenizer):
    return [make_llama(tokenizer, seed) for seed in (1, 2, 3)]


# ----------------------------------------------------------------------------------------------
# Numbers: the same as the old implementation
# ----------------------------------------------------------------------------------------------


def test_token_budget_batches_sorted_within_budget_and_complete():
    lengths = [5, 40, 12, 12, 90, 3, 33, 40, 7]
    batches = token_budget_batches(lengths, max_tokens=80, max_rows=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # longest first
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 80
    assert batches[0] == [4]  # longer than the budget: alone


@pytest.mark.parametrize("chunk_positions", [1, 7, 10_000])
def test_new_features_equal_the_old_implementation(tokenizer, experts, chunk_positions):
    samples = _samples(tokenizer, 13)
    old = legacy_compute_expert_features(experts, samples, tokenizer.pad_token_id, batch_size=4)
    new = compute_expert_features(experts, samples, tokenizer.pad_token_id, batch_size=5, max_tokens_per_batch=150,
                                  logit_chunk_bytes=4 * len(tokenizer) * chunk_positions)
    _assert_same(new, old)


def test_bf16_experts_match_the_old_implementation(tokenizer, experts):
    bf16 = [make_llama(tokenizer, seed).to(torch.bfloat16) for seed in (1, 2, 3)]
    samples = _samples(tokenizer, 9, seed=1)
    old = legacy_compute_expert_features(bf16, samples, tokenizer.pad_token_id, batch_size=4)
    new = compute_expert_features(bf16, samples, tokenizer.pad_token_id, max_tokens_per_batch=120,
                                  logit_chunk_bytes=4 * len(tokenizer) * 16)
    total = sum(f["argmax"].numel() for f in old)
    agree = sum(int((a["argmax"] == b["argmax"]).sum()) for a, b in zip(new, old))
    # bf16 hidden states of differently padded batches may differ in the last bit; the reduction
    # of the logits is the old one (fp32 log-softmax of the bf16 logits, argmax in bf16)
    assert agree >= 0.99 * total
    assert max(float((a["gold"] - b["gold"]).abs().max()) for a, b in zip(new, old)) < 5e-2


def test_vocabulary_slice_masks_appended_ids(tokenizer, experts):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=len(tokenizer) + 5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    padded = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # make an appended id the favourite everywhere: it must be masked
        padded.lm_head.weight[-1] = padded.model.norm.weight * 10
    pool = [experts[0], padded]
    samples = _samples(tokenizer, 6)
    old = legacy_compute_expert_features(pool, samples, tokenizer.pad_token_id, vocab_size=len(tokenizer))
    new = compute_expert_features(pool, samples, tokenizer.pad_token_id, vocab_size=len(tokenizer))
    _assert_same(new, old)
    assert all(int(f["argmax"].max()) < len(tokenizer) for f in new)


def test_gemma2_soft_capping_and_tied_embeddings(tokenizer):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    def gemma(seed):
        torch.manual_seed(seed)
        config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                              final_logit_softcapping=0.5, attn_logit_softcapping=50.0, sliding_window=16,
                              pad_token_id=tokenizer.pad_token_id)
        return Gemma2ForCausalLM(config).eval()

    models = [gemma(1), gemma(2)]
    runner = ExpertRunner(models[0], len(tokenizer))
    assert runner.mode == "head" and runner.softcap == 0.5
    assert runner.head.weight is models[0].get_input_embeddings().weight  # tied
    samples = _samples(tokenizer, 7, seed=2)
    old = legacy_compute_expert_features(models, samples, tokenizer.pad_token_id, batch_size=3)
    new = compute_expert_features(models, samples, tokenizer.pad_token_id, max_tokens_per_batch=100,
                                  logit_chunk_bytes=4 * len(tokenizer) * 5)
    _assert_same(new, old)
    runner.softcap = None  # without the capping the numbers would differ: the test can see it
    uncapped = runner.run(samples, tokenizer.pad_token_id, 100)
    assert not torch.allclose(uncapped[0][0], new[0]["gold"][:, 0], atol=1e-3)


def test_a_forward_that_rescales_logits_falls_back_to_the_forward(tokenizer):
    from transformers import LlamaForCausalLM

    class Scaled(LlamaForCausalLM):  # like Cohere's logit_scale or Granite's logits_scaling
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    base = make_llama(tokenizer, 4)
    scaled = Scaled(base.config).eval()
    scaled.load_state_dict(base.state_dict())
    runner = ExpertRunner(scaled, len(tokenizer))
    assert runner.mode == "forward"
    samples = _samples(tokenizer, 5, seed=3)
    _assert_same(compute_expert_features([scaled], samples, tokenizer.pad_token_id, logit_chunk_bytes=4 * 320 * 3),
                 legacy_compute_expert_features([scaled], samples, tokenizer.pad_token_id))


def test_no_whole_batch_logits_are_formed(tokenizer, experts):
    """After the load-time probe, the output layer only ever sees chunks of response positions and
    the model's full forward is never called."""
    model = experts[0]
    runner = ExpertRunner(model, len(tokenizer), chunk_bytes=4 * len(tokenizer) * 6)
    shapes, forwards = [], []
    hooks = [model.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))),
             model.register_forward_hook(lambda m, i, o: forwards.append(1))]
    try:
        runner.run(_samples(tokenizer, 10), tokenizer.pad_token_id, max_tokens_per_batch=200)
    finally:
        for hook in hooks:
            hook.remove()
    assert shapes and not forwards
    assert all(len(s) == 2 and s[0] <= 6 for s in shapes)  # [positions <= chunk, vocab]


# ----------------------------------------------------------------------------------------------
# Shards: files, resume, stale shards, several processes
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expert_dirs(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    dirs = []
    for seed in (1, 2, 3):
        make_llama(tokenizer, seed).save_pretrained(root / f"expert{seed}")
        dirs.append(str(root / f"expert{seed}"))
    return dirs


def _spec(tokenizer, expert_dirs, out_dir: Path) -> dict:
    """Two output files: an SFT set (6 samples) and preference pairs (3): with shard_size 2,
    3 + 2 + 2 = 7 shards per expert, 21 in all."""
    sft = _samples(tokenizer, 6, seed=5)
    chosen, rejected = _samples(tokenizer, 3, seed=6), _samples(tokenizer, 3, seed=7)
    enc = lambda seqs: [[e.input_ids, e.labels] for e in seqs]  # noqa: E731
    return {"experts": expert_dirs, "out": str(out_dir), "pad": tokenizer.pad_token_id, "vocab": len(tokenizer),
            "sft": enc(sft), "chosen": enc(chosen), "rejected": enc(rejected), "shard_size": 2, "settings": {}}


def _run(spec: dict, **kwargs) -> dict:
    """The way the workflow step calls compute_feature_files (also run in a subprocess below)."""
    dec = lambda rows: [Encoded(*r) for r in rows]  # noqa: E731
    out = Path(spec["out"])
    sets = [FeatureSet("sft", out / "sft.pt", {SINGLE_PART: dec(spec["sft"])}),
            FeatureSet("preferences", out / "preferences.pt",
                       {"chosen": dec(spec["chosen"]), "rejected": dec(spec["rejected"])})]
    experts = [ExpertSource(f"e{i}", d) for i, d in enumerate(spec["experts"])]
    return compute_feature_files(sets, experts, spec["pad"], spec["vocab"], {"experts": ["a", "b", "c"]},
                                 settings=spec["settings"], shard_size=spec["shard_size"],
                                 max_tokens_per_batch=100, **kwargs)


KILLED_RUN = """
import json, os, signal, sys
sys.path.insert(0, {tests!r})
import fusionroute.features as F
import test_features as T
spec = json.load(open(sys.argv[1]))
saved, original = [0], F._save_shard
def save_then_die(*args, **kwargs):
    original(*args, **kwargs)
    saved[0] += 1
    if saved[0] == spec["kill_after"]:
        os.kill(os.getpid(), signal.SIGKILL)
F._save_shard = save_then_die
T._run(spec)
"""


@pytest.fixture(scope="module")
def reference(tokenizer, expert_dirs, tmp_path_factory):
    """An uninterrupted run's files (bytes) and the old implementation's features."""
    out = tmp_path_factory.mktemp("reference")
    spec = _spec(tokenizer, expert_dirs, out)
    assert _run(spec) == {"computed": 21, "shards": 21}
    assert not (out / "sft.pt.shards").exists() and not (out / "preferences.pt.shards").exists()
    return {"sft": (out / "sft.pt").read_bytes(), "preferences": (out / "preferences.pt").read_bytes(), "spec": spec}


def test_feature_files_equal_the_old_step(tokenizer, experts, reference, tmp_path):
    spec = reference["spec"]
    dec = lambda rows: [Encoded(*r) for r in rows]  # noqa: E731
    (tmp_path / "sft.pt").write_bytes(reference["sft"])
    (tmp_path / "preferences.pt").write_bytes(reference["preferences"])
    sft, meta = load_features(tmp_path / "sft.pt")
    assert meta == {"experts": ["a", "b", "c"]}
    _assert_same(sft, legacy_compute_expert_features(experts, dec(spec["sft"]), spec["pad"]))
    pairs, _ = load_features(tmp_path / "preferences.pt")
    assert all(set(p) == {"chosen", "rejected"} for p in pairs) and len(pairs) == 3
    for side in ("chosen", "rejected"):
        _assert_same([p[side] for p in pairs], legacy_compute_expert_features(experts, dec(spec[side]), spec["pad"]))


def test_killed_run_resumes_from_its_shards(tokenizer, expert_dirs, reference, tmp_path, monkeypatch, capsys):
    spec = {**_spec(tokenizer, expert_dirs, tmp_path), "kill_after": 9}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN.format(tests=str(REPO / "tests")))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "spec.json")], capture_output=True, text=True,
                          env={**os.environ, "FUSIONROUTE_NO_PROGRESS": "1"}, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL mid-run
    assert not (tmp_path / "sft.pt").exists()
    assert len(list(tmp_path.glob("*.shards/*.pt"))) == 9

    loaded = []
    original = ExpertSource.load
    monkeypatch.setattr(ExpertSource, "load", lambda self, device: loaded.append(self.name) or original(self, device))
    assert _run(spec) == {"computed": 12, "shards": 21}
    assert loaded == ["e1", "e2"]  # expert 0's 7 shards were all done: not even loaded
    assert "resuming: 9 of 21 shard(s) already done" in capsys.readouterr().out
    assert (tmp_path / "sft.pt").read_bytes() == reference["sft"]
    assert (tmp_path / "preferences.pt").read_bytes() == reference["preferences"]
    assert not list(tmp_path.glob("*.shards"))


class Interrupt(Exception):
    pass


def _interrupted_run(spec: dict, monkeypatch, after: int) -> None:
    saved, original = [0], F._save_shard

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        saved[0] += 1
        if saved[0] == after:
            raise Interrupt

    monkeypatch.setattr(F, "_save_shard", save_then_stop)
    with pytest.raises(Interrupt):
        _run(spec)
    monkeypatch.setattr(F, "_save_shard", original)


@pytest.mark.parametrize("change", ["settings", "data", "expert weights", "code version", "shard size"])
def test_shards_of_other_inputs_or_settings_are_not_reused(tokenizer, expert_dirs, reference, tmp_path, monkeypatch,
                                                           capsys, change):
    import shutil

    dirs = [shutil.copytree(d, tmp_path / f"e{i}") for i, d in enumerate(expert_dirs)]
    spec = _spec(tokenizer, [str(d) for d in dirs], tmp_path)
    _interrupted_run(spec, monkeypatch, after=4)
    if change == "settings":
        spec["settings"] = {"max_len": 65}
    elif change == "data":
        spec["sft"][0][0] = spec["sft"][0][0][:-1]
        spec["sft"][0][1] = spec["sft"][0][1][:-1]
    elif change == "expert weights":  # retrained in place: same path, other weights
        make_llama(tokenizer, 99).save_pretrained(dirs[0])
    elif change == "code version":
        monkeypatch.setattr(F, "CODE_VERSION", "0" * 16)
    else:
        spec["shard_size"] = 3
    capsys.readouterr()
    result = _run(spec)
    out = capsys.readouterr().out
    discarded = [int(n) for n in re.findall(r"discarding (\d+) shard\(s\) in .* made with other inputs or settings "
                                            r"\(key \w+ != \w+\); starting over", out)]
    if change == "data":  # only the SFT set changed: its 3 shards go, the preference set's 1 stays
        assert discarded == [3] and result["computed"] == result["shards"] - 1, out
    else:
        assert sum(discarded) == 4 and result["computed"] == result["shards"], out  # nothing reused
    if change in ("settings", "code version", "shard size"):  # same numbers, recomputed
        assert (tmp_path / "sft.pt").read_bytes() == reference["sft"]


RANK_RUN = """
import json, sys
sys.path.insert(0, {tests!r})
import fusionroute.features as F
import test_features as T
F.WAIT_POLL_S = 0.05
spec = json.load(open(sys.argv[1]))
print(json.dumps(T._run(spec, rank=int(sys.argv[2]), world=2, log=lambda _: None)))
"""


def test_processes_split_the_shards(tokenizer, expert_dirs, reference, tmp_path, monkeypatch):
    """torchrun / accelerate ranks: rank 0 prepares the shard directories, each rank computes every
    world-th shard, rank 0 waits for the others' and assembles. Rank 1 is a real second process:
    ranks must not be threads of one interpreter, because transformers' from_pretrained swaps
    class attributes (tie_weights, init_weights) while it loads, and two concurrent loads can leave
    them swapped for the rest of the process."""
    monkeypatch.setattr(F, "WAIT_POLL_S", 0.05)
    spec = _spec(tokenizer, expert_dirs, tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    script = tmp_path / "rank.py"
    script.write_text(RANK_RUN.format(tests=str(REPO / "tests")))
    rank1 = subprocess.Popen([sys.executable, str(script), str(tmp_path / "spec.json"), "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "FUSIONROUTE_NO_PROGRESS": "1"})
    try:
        result0 = _run(spec, rank=0, world=2, log=lambda _: None)
        out, err = rank1.communicate(timeout=300)
    finally:
        rank1.kill()
    assert rank1.returncode == 0, err[-2000:]
    assert {0: result0, 1: json.loads(out.strip().splitlines()[-1])} == {0: {"computed": 11, "shards": 21},
                                                                           1: {"computed": 10, "shards": 21}}
    assert (tmp_path / "sft.pt").read_bytes() == reference["sft"]
    assert (tmp_path / "preferences.pt").read_bytes() == reference["preferences"]


def test_spawned_worker_per_device(tokenizer, expert_dirs, reference, tmp_path):
    """Several visible GPUs: one worker process per device (two CPU workers here)."""
    spec = _spec(tokenizer, expert_dirs, tmp_path)
    assert _run(spec, devices=["cpu", "cpu"]) == {"computed": 21, "shards": 21}
    assert (tmp_path / "sft.pt").read_bytes() == reference["sft"]
    assert (tmp_path / "preferences.pt").read_bytes() == reference["preferences"]


# ----------------------------------------------------------------------------------------------
# The workflow step
# ----------------------------------------------------------------------------------------------


def test_expert_features_step(tokenizer, tokenizer_dir, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from fusionroute.experts import ExpertPool
    from fusionroute.io import write_jsonl
    from fusionroute.steps import run_step
    from fusionroute.steps.train import load_pairs, load_sft_encoded

    dirs = []
    for seed in (1, 2, 3):
        model = make_llama(tokenizer, seed)
        if seed == 2:  # an expert with an appended id, as a fine-tuning recipe's pad token
            torch.manual_seed(seed)
            model = LlamaForCausalLM(LlamaConfig(**{**model.config.to_dict(), "vocab_size": len(tokenizer) + 1}))
        model.save_pretrained(tmp_path / f"expert{seed}")
        dirs.append(str(tmp_path / f"expert{seed}"))
    rng = random.Random(0)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, k)))  # noqa: E731
    write_jsonl(tmp_path / "sft.jsonl", [{"instruction": text(6), "response": text(30)} for _ in range(7)])
    write_jsonl(tmp_path / "pref.jsonl",
                [{"instruction": text(6), "chosen": text(20), "rejected": text(20)} for _ in range(4)])
    params = {"models": {"experts": dirs, "tokenizer": str(tokenizer_dir)}, "expert_names": ["m", "c", "i"],
              "prompt_template": "### Instruction:\n{instruction}\n\n### Response:\n", "max_len": 48,
              "dtype": "float32", "device": "cpu", "shard_size": 3}
    outputs = {"sft": str(tmp_path / "f/sft.pt"), "preferences": str(tmp_path / "f/preferences.pt")}
    run_step("expert_features", {"sft": str(tmp_path / "sft.jsonl"), "preferences": str(tmp_path / "pref.jsonl")},
             outputs, params)
    assert "masked ids outside it (c: 1)" in capsys.readouterr().out

    pool = ExpertPool.load(params["expert_names"], dirs, str(tokenizer_dir))  # the old step's way
    assert F.expert_vocabulary(params["expert_names"], dirs, str(tokenizer_dir))[1] == pool.vocab  # weights unread
    template, pad = params["prompt_template"], pool.tokenizer.pad_token_id
    sft, meta = load_features(outputs["sft"])
    assert meta == {"experts": ["m", "c", "i"], "max_len": 48, "vocab_size": pool.vocab.size}
    old = legacy_compute_expert_features(pool.models, load_sft_encoded(str(tmp_path / "sft.jsonl"), pool.tokenizer,
                                                                       template, 48), pad, vocab_size=pool.vocab.size)
    _assert_same(sft, old)
    pairs = load_pairs(str(tmp_path / "pref.jsonl"), pool.tokenizer, template, 48)
    features, _ = load_features(outputs["preferences"])
    for side in ("chosen", "rejected"):
        old = legacy_compute_expert_features(pool.models, [getattr(p, side) for p in pairs], pad,
                                             vocab_size=pool.vocab.size)
        _assert_same([f[side] for f in features], old)

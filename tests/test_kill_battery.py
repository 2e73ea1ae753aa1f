"""kill -9 battery: a long step killed at a random point resumes to the artefact an uninterrupted
run makes, byte for byte, redoing no finished sample (generation) or step (training) beyond the
one in flight; a training job whose settings changed in between starts over and says so.

Each run is a real process (`python -m fusionroute.steps run-step`, what the workflow runs),
stopped with SIGSTOP to read its saved state and then killed with SIGKILL. Expert features and
the judge have their own SIGKILL tests (tests/test_features.py, tests/eval/test_judge.py).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fusionroute.io import write_jsonl
from model_fixtures import make_llama

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
ENV = {**os.environ, "FUSIONROUTE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "FUSIONROUTE_WARM": "0"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tokenizer, tokenizer_dir, tmp_path_factory):
    """Two experts, a reward model, SFT data and a benchmark file, all on disk."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("kill_world")
    experts = []
    for seed in (1, 2):
        make_llama(tokenizer, seed).save_pretrained(root / f"expert{seed}")
        experts.append(str(root / f"expert{seed}"))
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(root / "reward")
    tokenizer.save_pretrained(root / "reward")
    write_jsonl(root / "sft.jsonl", [{"instruction": f"Add {i} and {i + 1}.", "response": f"The sum is {2 * i + 1}."}
                                     for i in range(48)])
    write_jsonl(root / "gsm8k.jsonl", [{"id": str(i), "question": f"Tom has {i} apples and buys 3. How many?",
                                        "answer": f"#### {i + 3}"} for i in range(24)])
    return {"root": root, "tokenizer": str(tokenizer_dir), "experts": experts, "reward": str(root / "reward")}


def _job(tmp: Path, name: str, inputs: dict, outputs: dict, params: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.job.json"
    path.write_text(json.dumps({"name": name, "inputs": inputs, "outputs": outputs, "params": params}))
    return path


def _run(job: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "fusionroute.steps", "run-step", str(job)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _kill_when(job: Path, ready, state):
    """Start the job, wait until `ready()`, freeze it, read `state()`, kill -9 it; returns the state."""
    proc = subprocess.Popen([sys.executable, "-m", "fusionroute.steps", "run-step", str(job)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None, f"the job ended before the kill point: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "the job never reached the kill point"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        return state()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL


# ---- generation (one model, and Collab with its reward model) -----------------------------------
def _generate_job(world, tmp: Path, kind: str) -> tuple[Path, Path]:
    models = {"tokenizer": world["tokenizer"], "model": world["experts"][0]}
    method_params: dict = {}
    if kind == "collab":
        models = {"tokenizer": world["tokenizer"], "experts": world["experts"], "reward_model": world["reward"]}
        method_params = {"top_k": 2, "lookahead": 2, "weight": 1.0}
    params = {"seed": 0, "device": "cpu", "dtype": "float32", "prompt_template": TEMPLATE, "max_len": 128,
              "benchmark": "gsm8k", "method": kind, "kind": kind, "models": models, "method_params": method_params,
              "batch_size": 2, "max_new_tokens": 12, "limit": 0}
    generations = tmp / "cell" / "generations.jsonl"
    return _job(tmp, "generate", {"data": str(world["root"] / "gsm8k.jsonl")},
                {"generations": str(generations), "settings": str(tmp / "cell" / "settings.json")}, params), generations


def _finished(partial: Path) -> int:
    """Complete sample lines in a partial generations file (its first line is the header)."""
    if not partial.exists():
        return 0
    return max(0, partial.read_bytes().count(b"\n") - 1)


@pytest.mark.parametrize("kind", ["single", "collab"])
def test_killed_generation_resumes_to_the_same_file(world, tmp_path, kind):
    reference_job, reference = _generate_job(world, tmp_path / "reference", kind)
    _run(reference_job)
    job, generations = _generate_job(world, tmp_path / "killed", kind)
    partial = Path(str(generations) + ".partial")
    kill_after = random.Random(kind).randint(2, 16)      # a random point, the same on every run of the test
    done = _kill_when(job, lambda: _finished(partial) >= kill_after, lambda: _finished(partial))
    assert not generations.exists() and done >= kill_after
    out = _run(job)
    assert f"{done} finished sample(s) kept" in out        # nothing finished is decoded again
    assert generations.read_bytes() == reference.read_bytes()
    assert not partial.exists()


# ---- training ----------------------------------------------------------------------------------
STEPS = 10


def _train_job(world, tmp: Path, lr: float = 5e-3) -> tuple[Path, Path]:
    model = tmp / "model"
    params = {"seed": 0, "device": "cpu", "dtype": "float32", "prompt_template": TEMPLATE, "max_len": 64,
              "models": {"tokenizer": world["tokenizer"], "init": world["experts"][0]},
              "optim": {"steps": STEPS, "batch_size": 4, "lr": lr, "checkpoint_every": 1}, "desc": "kill test"}
    return _job(tmp, "finetune_lm", {"data": str(world["root"] / "sft.jsonl")},
                {"model": str(model), "log": str(tmp / "log.json")}, params), model


def _checkpointed_step(model: Path) -> int:
    state = Path(str(model) + ".ckpt") / "trainer_state.pt"
    return torch.load(state, weights_only=False)["step"] if state.exists() else 0


def _forwards(tmp: Path) -> int:
    return json.loads((tmp / "log.json").read_text())["log"][-1]["forwards"]


def test_killed_training_resumes_to_the_same_weights(world, tmp_path):
    reference_job, reference = _train_job(world, tmp_path / "reference")
    _run(reference_job)
    job, model = _train_job(world, tmp_path / "killed")
    kill_at = random.Random("training").randint(2, STEPS - 2)
    step = _kill_when(job, lambda: _checkpointed_step(model) >= kill_at, lambda: _checkpointed_step(model))
    assert kill_at <= step < STEPS
    out = _run(job)
    assert "same inputs, settings and code: resuming" in out
    for name in ("model.safetensors", "config.json"):
        assert (model / name).read_bytes() == (reference / name).read_bytes(), name
    # the resumed process ran only the steps after the checkpoint
    assert _forwards(tmp_path / "killed") * STEPS == _forwards(tmp_path / "reference") * (STEPS - step)
    assert not Path(str(model) + ".ckpt").exists()


def test_training_whose_settings_changed_starts_over(world, tmp_path):
    job, model = _train_job(world, tmp_path / "run")
    _kill_when(job, lambda: _checkpointed_step(model) >= 2, lambda: None)
    changed, _ = _train_job(world, tmp_path / "run", lr=1e-3)       # same output, another learning rate
    out = _run(changed)
    assert "made by other inputs, settings or code" in out and "starting over" in out
    reference_job, reference = _train_job(world, tmp_path / "reference", lr=1e-3)
    _run(reference_job)
    assert (model / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert _forwards(tmp_path / "run") == _forwards(tmp_path / "reference")   # every step was run again

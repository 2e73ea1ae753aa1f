"""The shared optimisation loop: crash-and-resume gives the run an uninterrupted job gives, and
data-parallel training over 2 real processes (torchrun + gloo on CPU, the DDP path accelerate
takes on GPUs) gives the weights of one process accumulating the same micro-batches."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model_fixtures import make_llama
from fusionroute.data import encode_pair
from fusionroute.trainers import train_lm
from fusionroute.training import OptimConfig, train_loop

HERE = Path(__file__).resolve().parent


def _data(tokenizer, n=12):
    return [encode_pair(tokenizer, f"### Instruction:\nAdd {i} and 2.\n\n### Response:\n", f"The answer is: {i + 2}", 64)
            for i in range(n)]


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(tokenizer, tmp_path):
    data = _data(tokenizer)
    cfg = OptimConfig(steps=6, batch_size=4, lr=5e-3, seed=0, checkpoint_every=2)
    whole = make_llama(tokenizer, 0)
    full_log = train_lm(whole, data, cfg, tokenizer.pad_token_id, "whole").log

    crashed = make_llama(tokenizer, 0)
    ckpt = tmp_path / "ckpt"
    # train_lm as it is, through a loop whose loss dies at step 4 (after the step-4 checkpoint)
    calls = {"n": 0}
    from fusionroute import trainers

    original = trainers.train_loop

    def dying_loop(modules, schedule, micro_loss, cfg, desc, checkpoint_dir=None):
        def micro(m, live):
            calls["n"] += 1
            if calls["n"] > 4:  # steps 0-3 ran (one micro-batch each), step 4 dies
                raise Crash("simulated crash")
            return micro_loss(m, live)
        return original(modules, schedule, micro, cfg, desc, checkpoint_dir)

    trainers.train_loop = dying_loop
    try:
        with pytest.raises(Crash):
            train_lm(crashed, data, cfg, tokenizer.pad_token_id, "crashing", checkpoint_dir=ckpt)
    finally:
        trainers.train_loop = original
    assert (ckpt / "trainer_state.pt").exists()
    resumed = make_llama(tokenizer, 0)  # a fresh process: weights come back from the checkpoint
    log = train_lm(resumed, data, cfg, tokenizer.pad_token_id, "resumed", checkpoint_dir=ckpt).log
    assert [e["step"] for e in log] == list(range(6))
    assert [e["loss"] for e in log] == pytest.approx([e["loss"] for e in full_log], rel=1e-6)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not ckpt.exists()  # cleaned up once the job finished


def test_loop_rejects_short_schedules_and_frozen_models(tokenizer):
    model = make_llama(tokenizer, 0)
    cfg = OptimConfig(steps=3, batch_size=2, lr=1e-3)
    with pytest.raises(ValueError, match="2 batches for 3 steps"):
        train_loop({"m": model}, [[0, 1]] * 2, lambda m, live: torch.zeros(()), cfg, "short")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train_loop({"m": model}, [[0, 1]] * 3, lambda m, live: torch.zeros(()), cfg, "frozen")


def _run_worker(mode: str, args: list[str], processes: int) -> None:
    env = {**os.environ, "FUSIONROUTE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    script = [str(HERE / "distributed_worker.py"), mode, *args]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        # what `accelerate launch` does on a GPU node, with CPU processes talking over gloo
        env.update({"FUSIONROUTE_LAUNCHED": "1", "ACCELERATE_USE_CPU": "true"})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *script]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.parametrize("mode", ["lm", "mix"])
def test_two_process_data_parallel_equals_one_process(mode, tokenizer, tokenizer_dir, tmp_path):
    init = tmp_path / "init"
    make_llama(tokenizer, 0).save_pretrained(init)
    one, two = tmp_path / "one", tmp_path / "two"
    # batch 8: the single process accumulates micro-batches of 4; each of 2 processes takes 4
    _run_worker(mode, [str(tokenizer_dir), str(init), str(one), "4"], processes=1)
    _run_worker(mode, [str(tokenizer_dir), str(init), str(two), "4"], processes=2)
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    start = load_file(init / "model.safetensors")
    assert a.keys() == b.keys()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 1e-3  # it trained
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5), k
    if mode == "mix":
        ha, hb = load_file(one / "routing_head.safetensors"), load_file(two / "routing_head.safetensors")
        assert torch.allclose(ha["weight"], hb["weight"], atol=2e-5)

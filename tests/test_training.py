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

    def dying_loop(modules, schedule, micro_loss, cfg, desc, checkpoint_dir=None, **kwargs):
        def micro(m, live, *pieces):
            calls["n"] += 1
            if calls["n"] > 4:  # steps 0-3 ran (one micro-batch each), step 4 dies
                raise Crash("simulated crash")
            return micro_loss(m, live, *pieces)
        return original(modules, schedule, micro, cfg, desc, checkpoint_dir, **kwargs)

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


@pytest.mark.parametrize("mode", ["lm", "mix", "mix_budget"])
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
    if mode != "lm":
        ha, hb = load_file(one / "routing_head.safetensors"), load_file(two / "routing_head.safetensors")
        assert torch.allclose(ha["weight"], hb["weight"], atol=2e-5)
    if mode == "mix_budget":  # the reference pass was split over the 2 processes and gathered
        ra = torch.load(str(one) + ".ref_logprobs.pt", weights_only=False)["frozen"]
        rb = torch.load(str(two) + ".ref_logprobs.pt", weights_only=False)["frozen"]
        for k in ("ref_chosen", "ref_rejected", "bias"):
            assert ra[k].shape == (8,) and torch.allclose(ra[k], rb[k], atol=1e-5), k


# ---- token budgets ----------------------------------------------------------------------------

def _varied(tokenizer, n=12):
    """Samples of clearly different lengths, so a budget cuts micro-batches unevenly."""
    return [encode_pair(tokenizer, f"### Instruction:\nAdd {i} and 2.\n\n### Response:\n",
                        "The answer is: " + " and".join([f" {i + 2}"] * (1 + i % 5)), 64) for i in range(n)]


def _fake_features(encoded, n_experts=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for e in encoded:
        n = sum(1 for label in e.labels[1:] if label != -100)
        out.append({"gold": -torch.rand(n, n_experts, generator=g) * 3,
                    "argmax": torch.randint(0, 4, (n, n_experts), generator=g, dtype=torch.int32)})
    return out


def _assert_same_update(a, b, atol=1e-6):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(x, y, atol=atol, rtol=0), (name, float((x - y).abs().max()), float(x.abs().max()))


def test_token_budget_pieces_and_equal_counts():
    from fusionroute.training import split_into, token_pieces

    lengths = {0: 10, 1: 40, 2: 12, 3: 38, 4: 11}
    rows = lambda i: (lengths[i],)
    pieces = token_pieces([0, 1, 2, 3, 4], rows, budget=80)
    assert sorted(i for p in pieces for i in p) == [0, 1, 2, 3, 4]
    assert all(len(p) * max(lengths[i] for i in p) <= 80 or len(p) == 1 for p in pieces)
    assert token_pieces([1], rows, budget=5) == [[1]]  # over the budget alone: runs alone
    more = split_into(pieces, 5, rows)
    assert len(more) == 5 and sorted(i for p in more for i in p) == [0, 1, 2, 3, 4]
    assert split_into([[0]], 3, rows) == [[0]]  # never more pieces than samples
    pairs = lambda i: (lengths[i], lengths[i] + 1)  # a preference pair puts two rows in the batch
    assert all(2 * len(p) * (max(lengths[i] for i in p) + 1) <= 90 or len(p) == 1
               for p in token_pieces([0, 1, 2, 3, 4], pairs, budget=90))


def test_token_budget_gives_the_unbudgeted_update(tokenizer):
    """LM loss, router SFT (LM + routing loss) and mix training (SFT + CDPO): a micro-batch cut
    into budgeted pieces trains to the same weights as the whole micro-batch, while running more
    forwards."""
    from fusionroute.router import RouterModel
    from fusionroute.trainers import MixConfig, PreferencePair, RoutingConfig, mix_train, preference_reference, train_router_sft

    data = _varied(tokenizer)
    longest = max(len(e.input_ids) for e in data)
    base = dict(steps=3, batch_size=6, micro_batch_size=6, lr=5e-3, seed=0)
    budget = 2 * longest  # two of the longest per forward: most micro-batches split into 3+ pieces

    a, b = make_llama(tokenizer, 0), make_llama(tokenizer, 0)
    whole = train_lm(a, data, OptimConfig(**base), tokenizer.pad_token_id, "whole")
    cut = train_lm(b, data, OptimConfig(**base, max_tokens_per_micro_batch=budget), tokenizer.pad_token_id, "cut")
    assert cut.log[-1]["forwards"] > 3
    assert [e["loss"] for e in cut.log] == pytest.approx([e["loss"] for e in whole.log], rel=1e-5)
    _assert_same_update(a, b)

    feats = _fake_features(data)
    routers = [RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0) for _ in range(2)]
    train_router_sft(routers[0], data, feats, OptimConfig(**base), RoutingConfig(), tokenizer.pad_token_id)
    train_router_sft(routers[1], data, feats, OptimConfig(**base, max_tokens_per_micro_batch=budget), RoutingConfig(),
                     tokenizer.pad_token_id)
    _assert_same_update(*routers)

    pairs = [PreferencePair(data[i], data[(i + 5) % len(data)]) for i in range(8)]
    for policy_kind in ("router", "lm"):
        policies = [RouterModel.from_lm(make_llama(tokenizer, 1), ["a", "b", "c"], seed=0) if policy_kind == "router"
                    else make_llama(tokenizer, 1) for _ in range(2)]
        frozen = preference_reference(policies[0], pairs, tokenizer.pad_token_id, 0.1)
        sft_feats = feats if policy_kind == "router" else None
        mix = dict(steps=3, batch_size=8, micro_batch_size=8, lr=5e-3, seed=0)
        mix_train(policies[0], data, sft_feats, pairs, frozen, OptimConfig(**mix), MixConfig(), tokenizer.pad_token_id, "w")
        log = mix_train(policies[1], data, sft_feats, pairs, frozen, OptimConfig(**mix, max_tokens_per_micro_batch=budget),
                        MixConfig(), tokenizer.pad_token_id, "c").log
        assert log[-1]["forwards"] > 3
        # every micro-batch mixes SFT rows and pairs, so pieces sum their gradients in another
        # order: float32 noise of ~2e-6 after three AdamW steps of 5e-3 (a wrong denominator or a
        # dropped row moves weights by ~1e-3)
        _assert_same_update(*policies, atol=1e-5)


def test_token_budget_needs_a_trainer_that_gives_lengths(tokenizer):
    model = make_llama(tokenizer, 0)
    cfg = OptimConfig(steps=1, batch_size=2, lr=1e-3, max_tokens_per_micro_batch=64)
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch is not supported"):
        train_loop({"m": model}, [[0, 1]], lambda m, live: torch.zeros(()), cfg, "no lengths")


# ---- precision --------------------------------------------------------------------------------

def _changed(before: dict, after: dict, keep) -> float:
    changed = total = 0
    for name, value in before.items():
        if keep(name):
            changed += int((after[name].float() != value).sum())
            total += value.numel()
    return changed / total


def test_bf16_training_keeps_fp32_master_weights_so_small_updates_land(tokenizer):
    """At lr 1e-5, AdamW's steps (~1e-5 per weight) are below half a bf16 ulp of a routing-head
    weight (~0.02: ulp 1.2e-4) and far below one of a norm weight (1.0: ulp 7.8e-3). Training the
    bf16 weights directly loses most of them; fp32 master weights keep every one."""
    from fusionroute.router import RouterModel
    from fusionroute.trainers import RoutingConfig, train_router_sft

    data = _varied(tokenizer, 8)
    feats = _fake_features(data)
    results = {}
    for master in (False, True):
        router = RouterModel.from_lm(make_llama(tokenizer, 0).to(torch.bfloat16), ["a", "b", "c"], seed=0)
        before = {n: p.detach().float().clone() for n, p in router.named_parameters()}
        cfg = OptimConfig(steps=12, batch_size=4, lr=1e-5, seed=0, master_weights=master)
        schedule = [[(4 * s + k) % len(data) for k in range(4)] for s in range(cfg.steps)]
        from fusionroute.data import collate
        from fusionroute.trainers import router_sft_loss

        def micro_loss(micro, live):
            return router_sft_loss(live["router"], collate([data[i] for i in micro], tokenizer.pad_token_id),
                                   [feats[i] for i in micro], RoutingConfig())[0]

        result = train_loop({"router": router}, schedule, micro_loss, cfg, "bf16", keep_master_weights=True)
        assert all(p.dtype == torch.bfloat16 for p in router.parameters())  # the world dtype, as saved
        trained = {n[len("router."):]: w for n, w in result.master_weights.items()} if master else \
            {n: p.detach() for n, p in router.named_parameters()}
        assert all(w.dtype == (torch.float32 if master else torch.bfloat16) for w in trained.values())
        not_embedding = lambda n: "embed_tokens" not in n  # rows of unseen tokens get no gradient
        results[master] = {
            "head": _changed(before, trained, lambda n: "routing_head" in n),
            "norm": _changed(before, trained, lambda n: "norm" in n),
            "all": _changed(before, trained, not_embedding),
        }
    old, new = results[False], results[True]
    assert old["norm"] == 0.0 and old["head"] < 0.5 and old["all"] < 0.5, old
    assert new["norm"] == 1.0 and new["head"] == 1.0 and new["all"] > 0.999, new


def test_float32_world_takes_the_plain_path(tokenizer):
    """No autocast and no copies in a float32 world: the masters are the parameters themselves."""
    model = make_llama(tokenizer, 0)
    storage = [p.data_ptr() for p in model.parameters()]
    result = train_lm(model, _data(tokenizer, 4), OptimConfig(steps=1, batch_size=2, lr=1e-3), tokenizer.pad_token_id, "fp32")
    assert result.master_weights == {}
    assert [p.data_ptr() for p in model.parameters()] == storage  # updated in place, never replaced
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not hasattr(model, "_fusionroute_save_dtype")

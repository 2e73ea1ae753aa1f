"""Router model, expert features, SFT with routing loss and mix training (CDPO) on tiny models."""
import pytest
import torch

from model_fixtures import make_llama
from fusionroute.data import encode_pair
from fusionroute.features import compute_expert_features, load_features, save_features
from fusionroute.router import RouterModel
from fusionroute.trainers import (
    MixConfig,
    PreferencePair,
    RoutingConfig,
    mix_train,
    preference_reference,
    reference_batches,
    router_sft_loss,
    stored_reference,
    train_router_sft,
)
from fusionroute.training import OptimConfig
from fusionroute.data import collate

TEMPLATE = "### Instruction:\n{}\n\n### Response:\n"


def _samples(tokenizer, n=8):
    pairs = [("Tom has 3 apples.", "3 + 4 = 7. The answer is: 7"), ("Write about cats.", "cats are small.")]
    return [encode_pair(tokenizer, TEMPLATE.format(pairs[i % 2][0]), pairs[i % 2][1], 64) for i in range(n)]


@pytest.fixture()
def experts(tokenizer):
    return [make_llama(tokenizer, seed) for seed in (1, 2, 3)]


def test_router_roundtrip(tokenizer, tmp_path):
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["math", "code", "instruct"], seed=0)
    ids = torch.tensor([[1, 5, 9, 12]])
    before = router(ids)
    router.save_pretrained(tmp_path)
    loaded = RouterModel.from_pretrained(tmp_path)
    after = loaded(ids)
    assert loaded.config.expert_names == ["math", "code", "instruct"]
    assert torch.allclose(before.logits, after.logits) and torch.allclose(before.routing_logits, after.routing_logits)
    assert before.routing_logits.shape == (1, 4, 3)
    with pytest.raises(FileNotFoundError, match="router_config.json"):
        RouterModel.from_pretrained(tmp_path / "missing")


def test_expert_features_line_up_and_roundtrip(tokenizer, experts, tmp_path):
    samples = _samples(tokenizer, 4)
    feats = compute_expert_features(experts, samples, tokenizer.pad_token_id, batch_size=3)
    for enc, feat in zip(samples, feats):
        n_response = sum(1 for label in enc.labels[1:] if label != -100)
        assert feat["gold"].shape == (n_response, 3) and feat["argmax"].shape == (n_response, 3)
        assert (feat["gold"] <= 0).all()
    # gold log-probs equal a direct computation with expert 1 on sample 0
    logits = experts[1](torch.tensor([samples[0].input_ids])).logits[0, :-1].log_softmax(-1)
    targets = torch.tensor(samples[0].input_ids[1:])
    mask = torch.tensor(samples[0].labels[1:]) != -100
    direct = logits[torch.arange(len(targets)), targets][mask]
    assert torch.allclose(feats[0]["gold"][:, 1], direct, atol=1e-5)
    save_features(tmp_path / "f.pt", feats, {"experts": 3})
    loaded, meta = load_features(tmp_path / "f.pt")
    assert meta == {"experts": 3} and torch.equal(loaded[2]["argmax"], feats[2]["argmax"])


def test_sft_teaches_the_routing_head_to_pick_the_best_expert(tokenizer, experts):
    samples = _samples(tokenizer, 8)
    feats = compute_expert_features(experts, samples, tokenizer.pad_token_id)
    for f in feats:  # make expert 2 the best on every position and the experts disagree everywhere
        f["gold"][:, 2] = 0.0
        f["gold"][:, :2] = -5.0
        f["argmax"] = torch.arange(3, dtype=torch.int32).expand(len(f["argmax"]), 3).clone()
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    cfg = OptimConfig(steps=30, batch_size=4, lr=1e-2, seed=0)
    log = train_router_sft(router, samples, feats, cfg, RoutingConfig(lam=1.0), tokenizer.pad_token_id).log
    assert log[-1]["loss"] < log[0]["loss"]
    out = router(torch.tensor([samples[0].input_ids]))
    assert (out.routing_logits[0].argmax(-1) == 2).float().mean() > 0.9


def test_mixture_reading_never_updates_experts(tokenizer, experts):
    samples = _samples(tokenizer, 4)
    feats = compute_expert_features(experts, samples, tokenizer.pad_token_id)
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    before = [p.detach().clone() for p in experts[0].parameters()]
    batch = collate(samples, tokenizer.pad_token_id)
    loss, parts = router_sft_loss(router, batch, feats, RoutingConfig(reading="mixture"), experts)
    loss.backward()
    assert parts["route"] > 0
    assert all(p.grad is None for e in experts for p in e.parameters())
    assert router.routing_head.weight.grad is not None and router.routing_head.weight.grad.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(before, experts[0].parameters()))


def _pairs(tokenizer, n=6):
    out = []
    for i in range(n):
        prompt = TEMPLATE.format(f"Tom has {i} apples. He buys 2 more.")
        out.append(PreferencePair(encode_pair(tokenizer, prompt, f"The answer is: {i + 2}", 64),
                                  encode_pair(tokenizer, prompt, f"The answer is: {i + 3}", 64)))
    return out


def test_cdpo_bias_uses_the_expert_the_reference_router_picks(tokenizer, experts):
    pairs = _pairs(tokenizer, 3)
    chosen = compute_expert_features(experts, [p.chosen for p in pairs], tokenizer.pad_token_id)
    rejected = compute_expert_features(experts, [p.rejected for p in pairs], tokenizer.pad_token_id)
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    with torch.no_grad():  # routing head picks expert 1 everywhere: only its logit is nonzero and positive
        router.routing_head.weight.zero_()
    hidden = router(torch.tensor([pairs[0].chosen.input_ids])).logits  # warm-up (no effect)
    del hidden

    class PickOne(torch.nn.Module):
        def forward(self, h):
            out = torch.zeros(*h.shape[:-1], 3)
            out[..., 1] = 1.0
            return out

    router.routing_head = PickOne()
    feats = [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]
    frozen = preference_reference(router, pairs, tokenizer.pad_token_id, beta=0.1, pair_features=feats)
    expected = torch.stack([0.1 * (c["gold"][:, 1].sum() - r["gold"][:, 1].sum()) for c, r in zip(chosen, rejected)])
    assert torch.allclose(frozen["bias"], expected, atol=1e-5)
    lm_only = preference_reference(router.lm, pairs, tokenizer.pad_token_id, beta=0.1)
    assert torch.equal(lm_only["bias"], torch.zeros(3))
    assert torch.allclose(lm_only["ref_chosen"], frozen["ref_chosen"], atol=1e-5)


def test_mix_training_routing_head_gets_no_gradient_from_cdpo(tokenizer, experts):
    pairs = _pairs(tokenizer, 6)
    chosen = compute_expert_features(experts, [p.chosen for p in pairs], tokenizer.pad_token_id)
    rejected = compute_expert_features(experts, [p.rejected for p in pairs], tokenizer.pad_token_id)
    feats = [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    frozen = preference_reference(router, pairs, tokenizer.pad_token_id, 0.1, feats)
    head_before = router.routing_head.weight.detach().clone()
    lm_before = router.lm.lm_head.weight.detach().clone()
    cfg = OptimConfig(steps=8, batch_size=6, lr=3e-3, seed=0)
    # preference samples only: the routing head must stay exactly as it was, the LM must move
    mix_train(router, [], [], pairs, frozen, cfg, MixConfig(), tokenizer.pad_token_id, "mix")
    assert torch.equal(router.routing_head.weight, head_before)
    assert not torch.equal(router.lm.lm_head.weight, lm_before)
    # and it moved the right way: the policy's chosen-vs-rejected margin grew (what DPO optimises)
    after = preference_reference(router.lm, pairs, tokenizer.pad_token_id, 0.1)
    margin = lambda f: (f["ref_chosen"] - f["ref_rejected"]).mean()
    assert margin(after) > margin(frozen)


def test_mix_training_updates_the_routing_head_from_sft_samples(tokenizer, experts):
    samples = _samples(tokenizer, 6)
    sft_feats = compute_expert_features(experts, samples, tokenizer.pad_token_id)
    pairs = _pairs(tokenizer, 6)
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    frozen = preference_reference(router.lm, pairs, tokenizer.pad_token_id, 0.1)
    head_before = router.routing_head.weight.detach().clone()
    mix_train(router, samples, sft_feats, pairs, frozen, OptimConfig(steps=3, batch_size=6, lr=1e-2),
              MixConfig(), tokenizer.pad_token_id, "mix")
    assert not torch.equal(router.routing_head.weight, head_before)
    with pytest.raises(ValueError, match="expert features"):
        mix_train(router, samples, None, pairs, frozen, OptimConfig(steps=1, batch_size=2, lr=1e-3),
                  MixConfig(), tokenizer.pad_token_id, "mix")


def test_reference_pass_batches_and_token_budget_give_the_same_terms(tokenizer, experts):
    pairs = _pairs(tokenizer, 7)
    chosen = compute_expert_features(experts, [p.chosen for p in pairs], tokenizer.pad_token_id)
    rejected = compute_expert_features(experts, [p.rejected for p in pairs], tokenizer.pad_token_id)
    feats = [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    whole = preference_reference(router, pairs, tokenizer.pad_token_id, 0.1, feats, batch_size=16)
    width = max(len(p.chosen.input_ids) for p in pairs)
    budget = 4 * width  # two pairs (four rows) per forward
    assert all(len(b) <= 2 for b in reference_batches(pairs, range(7), 16, budget))
    cut = preference_reference(router, pairs, tokenizer.pad_token_id, 0.1, feats, batch_size=16, max_tokens=budget)
    part = preference_reference(router, pairs, tokenizer.pad_token_id, 0.1, feats, batch_size=2, indices=[5, 1, 3])
    for k in whole:
        assert torch.allclose(cut[k], whole[k], atol=1e-5), k
        assert torch.allclose(part[k], whole[k][[5, 1, 3]], atol=1e-5), k


def test_stored_reference_equals_a_live_pass_and_is_reused_until_its_inputs_change(tokenizer, experts, tmp_path, capsys):
    pairs = _pairs(tokenizer, 5)
    chosen = compute_expert_features(experts, [p.chosen for p in pairs], tokenizer.pad_token_id)
    rejected = compute_expert_features(experts, [p.rejected for p in pairs], tokenizer.pad_token_id)
    feats = [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]
    loads = []

    def load():
        loads.append(1)
        return RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)

    live = preference_reference(load(), pairs, tokenizer.pad_token_id, 0.1, feats)
    loads.clear()
    path = tmp_path / "router.ref_logprobs.pt"
    fingerprint = {"init": "sft-checkpoint-v1", "dtype": "float32"}
    first = stored_reference(path, load, pairs, tokenizer.pad_token_id, 0.1, feats, fingerprint)
    assert len(loads) == 1 and path.exists()
    for k in live:
        assert torch.equal(first[k], live[k]), k  # the very numbers of a live reference pass
    capsys.readouterr()

    # a resumed / re-run job: same inputs, nothing loaded, the same numbers
    again = stored_reference(path, load, pairs, tokenizer.pad_token_id, 0.1, feats, fingerprint)
    assert len(loads) == 1 and all(torch.equal(again[k], first[k]) for k in first)
    assert "reusing" in capsys.readouterr().out

    # any input changed: recomputed, and the log says what changed
    changes = [
        (dict(beta=0.2), "beta and pad id"),
        (dict(reference={"init": "sft-checkpoint-v2", "dtype": "float32"}), "reference model"),
        (dict(pairs=pairs[:4], pair_features=feats[:4]), "pairs"),
    ]
    for change, what in changes:
        args = {**dict(pairs=pairs, beta=0.1, pair_features=feats, reference=fingerprint), **change}
        out = stored_reference(path, load, args["pairs"], tokenizer.pad_token_id, args["beta"], args["pair_features"],
                               args["reference"])
        log = capsys.readouterr().out
        assert "recomputing" in log and what in log, log
        assert len(out["bias"]) == len(args["pairs"])
    assert len(loads) == 1 + len(changes)
    shifted = [{"chosen": {k: v + 0.5 if k == "gold" else v for k, v in f["chosen"].items()},
                "rejected": f["rejected"]} for f in feats]
    stored_reference(path, load, pairs, tokenizer.pad_token_id, 0.1, feats, fingerprint)  # back to the original
    capsys.readouterr()
    stored_reference(path, load, pairs, tokenizer.pad_token_id, 0.1, shifted, fingerprint)
    assert "(changed: expert features)" in capsys.readouterr().out


def test_model_fingerprint_sees_retrained_weights(tokenizer, tmp_path):
    from fusionroute.trainers import model_fingerprint

    make_llama(tokenizer, 0).save_pretrained(tmp_path / "m")
    before = model_fingerprint(tmp_path / "m")
    assert model_fingerprint(tmp_path / "m") == before and "model.safetensors" in before["files"]
    make_llama(tokenizer, 1).save_pretrained(tmp_path / "m")
    assert model_fingerprint(tmp_path / "m") != before
    assert model_fingerprint("some-org/some-model") == {"source": "some-org/some-model"}


def test_sft_log_shows_the_parts_of_eq3(tokenizer, experts):
    """Each step's log row carries the LM loss, the routing loss and the informative share, and
    (one micro-batch per step) loss = lm_loss + lambda * routing_loss."""
    from fusionroute.training import summarise_log

    samples = _samples(tokenizer, 8)
    feats = compute_expert_features(experts, samples, tokenizer.pad_token_id)
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    log = train_router_sft(router, samples, feats, OptimConfig(steps=4, batch_size=4, lr=1e-3, seed=0),
                           RoutingConfig(lam=0.5), tokenizer.pad_token_id).log
    for row in log:
        assert row["loss"] == pytest.approx(row["lm_loss"] + 0.5 * row["routing_loss"], rel=1e-5)
        assert 0.0 < row["informative_share"] <= 1.0
    summary = summarise_log(log)
    assert summary["lm_loss"]["first"] == pytest.approx(sum(r["lm_loss"] for r in log) / 4)


def test_mix_log_shows_rewards_margins_and_accuracy_as_trl(tokenizer, experts):
    """At step 0 the policy is its own reference: implicit rewards 0 and the DPO loss log 2.
    Later steps: margin = chosen - rejected reward, accuracy in [0, 1]; SFT parts logged apart."""
    import math

    pairs = _pairs(tokenizer, 4)
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    frozen = preference_reference(router.lm, pairs, tokenizer.pad_token_id, 0.1)
    only_pairs = mix_train(router, [], [], pairs, frozen, OptimConfig(steps=8, batch_size=4, lr=3e-3, seed=0),
                           MixConfig(), tokenizer.pad_token_id, "mix").log
    first = only_pairs[0]
    assert first["rewards_chosen"] == pytest.approx(0.0, abs=1e-5)
    assert first["rewards_rejected"] == pytest.approx(0.0, abs=1e-5)
    assert first["pref_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["cdpo_bias"] == 0.0 and "sft_lm_loss" not in first  # an LM reference: no bias; no SFT rows

    samples = _samples(tokenizer, 4)
    sft_feats = compute_expert_features(experts, samples, tokenizer.pad_token_id)
    router = RouterModel.from_lm(make_llama(tokenizer, 0), ["a", "b", "c"], seed=0)
    log = mix_train(router, samples, sft_feats, pairs, frozen, OptimConfig(steps=6, batch_size=4, lr=1e-2, seed=0),
                    MixConfig(), tokenizer.pad_token_id, "mix").log
    with_pairs = [row for row in log if "rewards_margin" in row]
    with_sft = [row for row in log if "sft_lm_loss" in row]
    assert with_pairs and with_sft
    for row in with_pairs:
        assert row["rewards_margin"] == pytest.approx(row["rewards_chosen"] - row["rewards_rejected"], abs=1e-6)
        assert 0.0 <= row["rewards_accuracy"] <= 1.0
    for row in with_sft:
        assert {"sft_routing_loss", "sft_informative_share"} <= set(row)
    # DPO pushed the chosen answers up relative to the rejected ones
    assert only_pairs[-1]["rewards_margin"] > 0 and only_pairs[-1]["pref_loss"] < math.log(2)


def test_mix_batches_draw_sft_samples_and_pairs_at_random(tokenizer):
    """Algorithm 1 mixes at random: with SFT samples much shorter than pairs, batches still hold
    both kinds (grouping by length made most batches one kind only)."""
    from fusionroute.data import encode_pair

    samples = [encode_pair(tokenizer, TEMPLATE.format("Hi."), "ok", 64) for _ in range(40)]  # short
    pairs = _pairs(tokenizer, 40)
    model = make_llama(tokenizer, 0)
    frozen = preference_reference(model, pairs, tokenizer.pad_token_id, 0.1)
    log = mix_train(model, samples, None, pairs, frozen, OptimConfig(steps=12, batch_size=8, lr=1e-4, seed=0),
                    MixConfig(), tokenizer.pad_token_id, "mix").log
    both = sum("sft_lm_loss" in row and "rewards_margin" in row for row in log)
    assert both >= 10, [sorted(k for k in row if k in ("sft_lm_loss", "rewards_margin")) for row in log]


def test_mixed_batches_hold_every_kind_in_proportion_and_group_lengths_within_kinds():
    from collections import Counter

    from fusionroute.data import mixed_batch_indices

    sft_lengths = [10 + (7 * i) % 90 for i in range(300)]
    pair_lengths = [40 + (11 * i) % 200 for i in range(100)]
    batches = list(mixed_batch_indices([300, 100], 16, 50, 0, [sft_lengths, pair_lengths], group=8))
    assert all(len(b) == 16 and sum(i < 300 for i in b) == 12 for b in batches)  # 3:1, every batch
    seen = Counter(i for b in batches for i in b)
    assert set(seen) <= set(range(400)) and max(seen.values()) - min(seen.values()) <= 1 + 1
    # within a kind, a batch's lengths are close (sorted windows), unlike a random draw
    spread = [max(sft_lengths[i] for i in b if i < 300) - min(sft_lengths[i] for i in b if i < 300) for b in batches]
    assert sum(spread) / len(spread) < 30
    assert batches == list(mixed_batch_indices([300, 100], 16, 50, 0, [sft_lengths, pair_lengths], group=8))
    assert list(mixed_batch_indices([0, 5], 4, 2, 0, [[], [1] * 5])) and \
        all(i >= 0 for b in mixed_batch_indices([0, 5], 4, 2, 0, [[], [1] * 5]) for i in b)

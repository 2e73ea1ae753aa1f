"""The learned testbed: coverage construction, the project's SFT on a tabular router, both decoders."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusionroute.losses import informative_mask, lm_loss, routing_loss, shift
from fusionroute.theory.learned import (RouterTrainConfig, WorldConfig, decode, demonstrations, evaluate,
                                        expert_features, exposed_prompts, make_world, oracle_routing_values,
                                        train_router)

TRAIN = RouterTrainConfig()


@pytest.mark.parametrize("uncovered", [0.0, 0.3, 1.0])
def test_coverage_knob_is_exact_at_every_depth(uncovered):
    tb = make_world(WorldConfig(n_prompts=5, horizon=4, uncovered=uncovered, seed=1))
    V = tb.mdp.vocab_size
    for t, (tokens, hole) in enumerate(zip(tb.experts.tokens, tb.uncovered)):
        optimal = tb.values.greedy()[t]
        assert hole.sum() == round(uncovered * hole.size)
        hits = (tokens == optimal[None]).sum(0)  # experts whose greedy token is pi*'s
        assert (hits[hole] == 0).all() and (hits[~hole] == 1).all()
        assert tokens.min() >= 0 and tokens.max() < V
    # every expert agrees with pi* on some states (a specialist, not a copy of another)
    if uncovered < 1:
        deep = tb.experts.tokens[-1] == tb.values.greedy()[-1][None]
        assert deep.any(axis=(1, 2)).all()


def test_the_sft_objective_is_the_projects_eq3():
    """What train_router optimises, recomputed from fusionroute.losses by hand, at the initial router."""
    tb = make_world(WorldConfig(n_prompts=4, horizon=3, uncovered=0.3, seed=2))
    demos = demonstrations(tb.mdp, tb.values)
    feats = expert_features(tb.mdp, tb.experts, demos)
    m, V = tb.experts.margin, tb.mdp.vocab_size
    for d, f in zip(demos, feats):
        assert f["gold"].shape == (3, 3) and f["argmax"].shape == (3, 3)
        for t in range(3):
            greedy = tb.experts.tokens[t][:, d.prompt, d.indices[t]]
            assert f["argmax"][t].tolist() == greedy.tolist()
            expected = [m - math.log(math.exp(m) + V - 1) if g == d.tokens[t] else -math.log(math.exp(m) + V - 1)
                        for g in greedy]
            np.testing.assert_allclose(f["gold"][t].numpy(), expected, rtol=1e-6)
    trained = train_router(tb.mdp, tb.experts, demos, RouterTrainConfig(steps=1, lr=1e-9, seed=0))
    rows = torch.tensor([[trained.rows[(t, d.prompt, j)] for t, j in enumerate(d.indices)] for d in demos])
    labels = torch.tensor([[-100, *d.tokens] for d in demos])
    out = trained.router(rows)
    _, targets, mask = shift(out.logits, labels)
    gold = torch.stack([f["gold"] for f in feats])
    informative = informative_mask(torch.stack([f["argmax"] for f in feats]), mask)
    by_hand = lm_loss(out.logits, labels) + routing_loss(out.routing_logits[:, :-1], gold, informative) / 3
    # the logged loss of step 0 is taken before the (1e-9) update; its batch of 16 is four shuffled
    # copies of the 4 demos, so its mean equals the mean over the demos
    assert trained.log[0]["loss"] == pytest.approx(float(by_hand.detach()), rel=1e-4)


@pytest.mark.parametrize("T", [4, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_coverage_routing_only_and_fusionroute_agree_and_reach_v_star(T, seed):
    tb = make_world(WorldConfig(horizon=T, uncovered=0.0, seed=seed))
    result = evaluate(tb, RouterTrainConfig(seed=seed))
    assert result.routing_accuracy == 1.0
    assert result.gap_routing_only == 0.0 and result.gap_fusionroute == 0.0  # exactly, not approximately
    trained = train_router(tb.mdp, tb.experts, demonstrations(tb.mdp, tb.values), RouterTrainConfig(seed=seed))
    routing = decode(tb.mdp, tb.experts, trained, complementary=False)
    fusion = decode(tb.mdp, tb.experts, trained, complementary=True)
    assert (routing.tokens == fusion.tokens).all() and (routing.returns == fusion.returns).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_low_coverage_routing_only_loses_exactly_where_pi_star_meets_a_hole(seed):
    tb = make_world(WorldConfig(horizon=6, uncovered=0.5, seed=seed))
    result = evaluate(tb, RouterTrainConfig(seed=seed))
    per = {k: np.array(v) for k, v in result.per_prompt.items()}
    exposed = per["exposed"]
    assert exposed.any()
    # no routing rule can emit a token no expert offers: every exposed prompt loses value ...
    assert (per["routing_oracle"][exposed] > 0).all() and (per["routing_only"][exposed] > 0).all()
    # ... and a router that fits its data loses nothing on the others
    assert result.routing_accuracy == 1.0
    assert (per["routing_oracle"][~exposed] == 0).all() and (per["routing_only"][~exposed] == 0).all()
    # the oracle is the best routing rule: no routing decoder beats it
    assert (per["routing_oracle"] <= per["routing_only"] + 1e-12).all()
    assert (per["routing_oracle"] <= per["routing_eq5"] + 1e-12).all()
    # complementary logits recover pi*'s response on every prompt
    assert result.router_min_margin > tb.experts.margin
    assert (per["fusionroute"] == 0).all()
    assert result.gap_routing_only > 0 == result.gap_fusionroute


def test_complementary_logits_lose_when_the_expert_is_more_confident_than_the_router():
    """Eq. 1 adds log-probs: once the expert's margin exceeds every lead the router learned, the
    sum's argmax is the expert's greedy token and FusionRoute decodes exactly what routing does."""
    tb = make_world(WorldConfig(horizon=6, uncovered=0.5, expert_margin=1e3, seed=0))
    trained = train_router(tb.mdp, tb.experts, demonstrations(tb.mdp, tb.values), TRAIN)
    routing = decode(tb.mdp, tb.experts, trained, complementary=False)
    fusion = decode(tb.mdp, tb.experts, trained, complementary=True)
    assert (routing.tokens == fusion.tokens).all()
    assert (tb.values.v[0][:, 0] - fusion.returns).mean() > 0


def test_oracle_routing_equals_v_star_under_global_coverage_and_not_without():
    full = make_world(WorldConfig(horizon=5, uncovered=0.0, seed=4))
    assert (oracle_routing_values(full.mdp, full.experts) == full.values.v[0][:, 0]).all()
    none = make_world(WorldConfig(horizon=5, uncovered=1.0, seed=4))
    assert exposed_prompts(none, demonstrations(none.mdp, none.values)).all()
    assert (oracle_routing_values(none.mdp, none.experts) < none.values.v[0][:, 0]).all()


def test_same_seeds_same_numbers():
    cfg = WorldConfig(horizon=4, uncovered=0.25, seed=7)
    a, b = evaluate(make_world(cfg), RouterTrainConfig(seed=3)), evaluate(make_world(cfg), RouterTrainConfig(seed=3))
    assert a == b
    c = evaluate(make_world(cfg), RouterTrainConfig(seed=4))
    assert c.final_loss != a.final_loss  # the router seed matters (init and batch order)


def test_bad_testbed_settings_are_rejected():
    with pytest.raises(ValueError):
        WorldConfig(uncovered=1.5)
    with pytest.raises(ValueError):
        WorldConfig(vocab_size=1)

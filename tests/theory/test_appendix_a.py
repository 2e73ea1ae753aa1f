"""Theorem 4.3's family (Appendix A): the construction, its assumptions and every routing rule on it."""
from __future__ import annotations

import pytest

from fusionroute.theory.appendix_a import (AppendixAConfig, check_assumptions, closed_form_gaps, enumerate_rules,
                                           family_values, greedy_q_rule, learned_on_family, member, paths,
                                           rollout_rule, solve_game)
from fusionroute.theory.learned import RouterTrainConfig
from fusionroute.theory.mdp import optimal_values, prefix_digits, prefix_index, returns_so_far

CASES = [(2, 4), (3, 4), (2, 6)]


def test_rewards_of_one_member_by_hand():
    cfg = AppendixAConfig(2, 4)  # tokens 0, 1 are the experts', 2 is FREE; epsilon 1/8, Delta 1/4
    mdp = member(cfg, (1, 0))
    r = lambda *tokens: mdp.reward(0, tokens)  # noqa: E731
    assert r(0) == r(1) == 0.875 and r(2) == 1.0  # expert first tokens pay 1 - epsilon
    assert r(0, 1) == r(1, 0) == 1.0  # up to T/2 every expert prefix pays 1
    assert r(1, 0, 1) == r(1, 0, 0, 1) == 1.0  # the rewarded first half p = (1, 0)
    assert r(0, 0, 1) == r(1, 1, 0) == 0.75  # one step after a wrong first half: 1 - Delta
    assert r(0, 0, 1, 1) == r(1, 1, 1, 0) == 0.0  # then nothing
    assert r(0, 0, 2) == r(0, 2, 0, 0) == r(2, 0, 0, 0) == 1.0  # any prefix with FREE pays 1
    totals = returns_so_far(mdp)[4][0]
    for j, tokens in enumerate(prefix_digits(4, 3)):
        if (tokens < 2).all():  # a routing path: T - eps if it starts with p, else T/2 + 1 - Delta - eps
            assert totals[j] == (3.875 if tuple(tokens[:2]) == (1, 0) else 2.625)


@pytest.mark.parametrize("n,T", CASES)
def test_optimal_value_is_t_minus_t_everywhere_and_the_assumptions_hold(n, T):
    cfg = AppendixAConfig(n, T)
    for p in paths(cfg):
        mdp = member(cfg, p)
        values = optimal_values(mdp)
        for t in range(T + 1):
            assert (values.v[t] == T - t).all()  # the proof's V*(x, y_<=t) = T - t
        check = check_assumptions(cfg, mdp, values)
        assert check.v_star == T
        assert check.best_routing_gap == cfg.epsilon  # Eq. 8: the routing path p reaches T - epsilon
        assert check.single_policy_coverage == cfg.epsilon  # Eq. 9: only the first step misses, by epsilon
        assert check.generalization_coverage == cfg.delta  # Eq. 10: tight at the wrong first halves
        assert check.holds(cfg.delta) and not check.holds(cfg.delta / 2)


@pytest.mark.parametrize("n,T", CASES)
def test_no_routing_rule_beats_the_theorem_and_the_best_one_is_exact(n, T):
    cfg = AppendixAConfig(n, T)
    game = solve_game(cfg)
    det, rand = closed_form_gaps(cfg)
    assert game.v_star == T
    assert game.best_deterministic_gap == det == T / 2 - 1 + cfg.delta + cfg.epsilon  # exact (dyadic)
    assert game.best_deterministic_gap >= game.theorem_bound_gap == T / 2 - 2
    rand_gap = game.v_star - game.best_randomized_value()
    assert rand_gap == pytest.approx(rand, abs=1e-9)
    assert game.theorem_bound_gap <= rand_gap < game.best_deterministic_gap
    # the undominated rules are exactly "walk one first half q": n^(T/2) of them
    assert game.vectors.shape == (n ** (T // 2), n ** (T // 2))
    assert not game.history_needed  # the current o_t already determines the history here


@pytest.mark.parametrize("n,T", [(2, 4), (3, 4)])
def test_brute_force_enumeration_of_every_rule_agrees(n, T):
    cfg = AppendixAConfig(n, T)
    game, every = solve_game(cfg), enumerate_rules(cfg)
    assert len(every) == game.n_rules
    assert every.min(1).max() == game.best_deterministic_value
    # every rule's vector is weakly dominated by one the pruned search kept
    assert all(((game.vectors >= v).all(1)).any() for v in every)


def test_random_rules_that_read_the_theorems_observations_never_do_better():
    cfg = AppendixAConfig(2, 6)
    game = solve_game(cfg)
    for seed in range(40):
        rule = lambda obs, s=seed: hash((s, obs)) % cfg.n_experts  # an arbitrary function of o_t  # noqa: E731
        values = family_values(cfg, rule)
        assert values.min() <= game.best_deterministic_value
        assert ((game.vectors >= values).all(1)).any()


def test_an_observation_is_the_theorems_o_t():
    cfg = AppendixAConfig(2, 4)
    mdp = member(cfg, (0, 1))
    values = optimal_values(mdp)
    seen = []

    def spy(obs):
        seen.append(obs)
        return 0

    assert rollout_rule(cfg, mdp, values, spy) == 2.625  # path (0,0,0,0) misses p = (0, 1)
    prefix, path_q, next_q = seen[2]
    assert prefix == (0, 0) and len(path_q) == 2 and len(next_q) == 3
    assert path_q == (values.q[0][0, 0, 0], values.q[1][0, prefix_index((0,), 3), 0])
    assert next_q == tuple(values.q[2][0, prefix_index((0, 0), 3)])
    assert next_q == (1.75, 1.75, 2.0)  # a wrong first half: experts' tokens pay 1 - Delta, FREE 1


def test_eq5_greedy_q_router_is_a_worst_case_rule_on_the_family():
    for n, T in CASES:
        cfg = AppendixAConfig(n, T)
        values = family_values(cfg, greedy_q_rule)
        assert T - values.min() == solve_game(cfg).best_deterministic_gap
        assert T - values.max() == cfg.epsilon  # it is right in exactly one member, p = (0, ..., 0)
        assert (values == T - cfg.epsilon).sum() == 1


def test_configs_outside_the_theorem_are_rejected():
    for bad in (dict(n_experts=1, horizon=4), dict(n_experts=2, horizon=5), dict(n_experts=2, horizon=4, epsilon=0.0),
                dict(n_experts=2, horizon=4, epsilon=0.5, delta=0.25)):
        with pytest.raises(ValueError):
            AppendixAConfig(**bad)


def test_sft_router_on_the_family_routing_only_fails_and_complementary_logits_recover_pi_star():
    cfg = AppendixAConfig(2, 4)
    det_gap = closed_form_gaps(cfg)[0]
    result = learned_on_family(cfg, expert_margin=2.0, train_cfg=RouterTrainConfig(seed=0))
    assert result.gap_routing_only.max() == det_gap  # one deterministic rule: misses some member
    assert result.tokens_fusionroute == (cfg.free_token, 0, 0, 0)  # pi*'s response
    assert (result.gap_fusionroute == 0).all()


def test_complementary_logits_cannot_leave_a_near_one_hot_experts_support():
    cfg = AppendixAConfig(2, 4)
    result = learned_on_family(cfg, expert_margin=1e4, train_cfg=RouterTrainConfig(seed=0))
    assert result.tokens_fusionroute == result.tokens_routing_only
    assert cfg.free_token not in result.tokens_fusionroute
    assert result.gap_fusionroute.max() == closed_form_gaps(cfg)[0]

"""Exact DP on token-level MDPs, checked against values worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from fusionroute.theory.mdp import (TokenMDP, optimal_values, policy_values, prefix_digits, prefix_index,
                                    prefix_tokens, restricted_optimum, returns_so_far, right_fold, rollout,
                                    state_distribution, table_policy)


def two_step_trap() -> TokenMDP:
    """V = 2, T = 2, one prompt. Token 1 pays now (1), token 0 pays later (0 then 5):
    r(0) = 0, r(1) = 1, r(00) = 5, r(01) = 0, r(10) = 0, r(11) = 1.
    By hand: V*(0) = max(5, 0) = 5, V*(1) = max(0, 1) = 1, Q*(root, 0) = 0 + 5 = 5,
    Q*(root, 1) = 1 + 1 = 2, V*(root) = 5: the greedy-now token 1 is the wrong first move."""
    return TokenMDP(2, 2, (np.array([[0.0, 1.0]]), np.array([[5.0, 0.0, 0.0, 1.0]])))


def test_dp_is_not_myopic_on_the_hand_checked_trap():
    values = optimal_values(two_step_trap())
    assert values.v[0].tolist() == [[5.0]]
    assert values.q[0].tolist() == [[[5.0, 2.0]]]
    assert values.v[1].tolist() == [[5.0, 1.0]]
    assert values.q[1].tolist() == [[[5.0, 0.0], [0.0, 1.0]]]
    assert values.v[2].tolist() == [[0.0] * 4]
    run = rollout(two_step_trap(), 0, table_policy(values.greedy()))
    assert run.tokens == (0, 0) and run.total == 5.0 and run.indices == (0, 0, 0)


def test_three_token_vocabulary_two_prompts_by_hand():
    # V = 3, T = 1: the value is just the best first reward, per prompt
    mdp = TokenMDP(3, 1, (np.array([[0.2, 0.9, 0.1], [0.7, 0.3, 0.4]]),))
    values = optimal_values(mdp)
    assert values.v[0][:, 0].tolist() == [0.9, 0.7]
    assert [g.tolist() for g in values.greedy()] == [[[1], [0]]]


def test_restricted_optimum_is_the_best_policy_over_the_allowed_tokens():
    mdp = two_step_trap()
    # forbid token 0 at the root: the best is then 1 + max(r(10), r(11)) = 2
    allowed = (np.array([[[False, True]]]), np.ones((1, 2, 2), dtype=bool))
    best = restricted_optimum(mdp, allowed)
    assert best.v[0][0, 0] == 2.0
    assert rollout(mdp, 0, table_policy(best.greedy())).tokens == (1, 1)
    with pytest.raises(ValueError, match="allows no token"):
        restricted_optimum(mdp, (np.zeros((1, 1, 2), dtype=bool), allowed[1]))


def test_performance_difference_lemma_holds_exactly_for_a_random_policy():
    """Lemma 4.1: V* - V^pi = sum_t E_{s_t ~ pi}[V*(s_t) - E_{a ~ pi} Q*(s_t, a)], per prompt."""
    rng = np.random.default_rng(3)
    V, T, P = 3, 4, 2
    mdp = TokenMDP(V, T, tuple(rng.random((P, V ** (t + 1))) for t in range(T)))
    probs = []
    for t in range(T):
        p = rng.random((P, V**t, V))
        probs.append(p / p.sum(-1, keepdims=True))
    star, v_pi, dist = optimal_values(mdp), policy_values(mdp, probs), state_distribution(mdp, probs)
    advantage = sum((dist[t] * (star.v[t] - (probs[t] * star.q[t]).sum(-1))).sum(-1) for t in range(T))
    np.testing.assert_allclose(star.v[0][:, 0] - v_pi[0][:, 0], advantage, rtol=1e-12)
    assert (star.v[0][:, 0] - v_pi[0][:, 0] > 0).all()  # a random policy is strictly worse here


def test_values_of_a_deterministic_policy_match_its_rollout_and_the_optimum_is_bit_exact():
    rng = np.random.default_rng(0)
    V, T, P = 4, 5, 3
    mdp = TokenMDP(V, T, tuple(rng.random((P, V ** (t + 1))) for t in range(T)))
    star = optimal_values(mdp)
    one_hot = [np.eye(V)[g] for g in star.greedy()]
    v_greedy = policy_values(mdp, one_hot)
    for x in range(P):
        run = rollout(mdp, x, table_policy(star.greedy()))
        assert run.total == star.v[0][x, 0]  # exactly: right_fold adds in the DP's order
        assert v_greedy[0][x, 0] == star.v[0][x, 0]
        assert returns_so_far(mdp)[T][x, run.indices[-1]] == pytest.approx(run.total, abs=1e-12)
    # a policy that always emits token 0 gets exactly the rewards along 0, 00, 000, ...
    run = rollout(mdp, 1, lambda x, t, j: 0)
    assert run.total == right_fold([float(mdp.rewards[t][1, 0]) for t in range(T)])


def test_prefix_numbering_round_trips_and_children_are_j_times_v_plus_a():
    V = 3
    for depth in range(4):
        digits = prefix_digits(depth, V)
        assert digits.shape == (V**depth, depth)
        for j in range(V**depth):
            tokens = prefix_tokens(j, depth, V)
            assert tokens == tuple(digits[j]) and prefix_index(tokens, V) == j
            for a in range(V):
                assert prefix_index(tokens + (a,), V) == j * V + a
    with pytest.raises(ValueError):
        prefix_index((0, 3), V)


def test_malformed_mdps_are_rejected():
    with pytest.raises(ValueError, match="reward arrays"):
        TokenMDP(2, 2, (np.zeros((1, 2)),))
    with pytest.raises(ValueError, match="shape"):
        TokenMDP(2, 2, (np.zeros((1, 2)), np.zeros((1, 3))))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        rollout(two_step_trap(), 0, lambda x, t, j: 2)

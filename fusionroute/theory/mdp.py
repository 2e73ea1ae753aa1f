"""Token-level MDPs of Section 4.1 with exact dynamic programming.

A state is a prompt x and a prefix y_<=t of t tokens; the action is the next token; the
transition appends it (deterministic); the reward r(x, y_<=t+1) is a number attached to the
prefix that the action creates; every response has exactly T tokens. Values are undiscounted
sums of the remaining rewards: V(x, y_<=T) = 0 and Q(x, y_<=t, a) = r(x, y_<=t a) + V(x, y_<=t a).

Storage: the depth-t prefixes of a prompt are numbered 0..V**t - 1 by reading the tokens as a
base-V number with y_1 the most significant digit, so the child of prefix j through token a is
j * V + a, and every quantity over depth-t states is one array of shape (n_prompts, V**t). The
backward pass is then a reshape and a max per depth (no Python loop over states), which keeps
T = 8 with V = 4 and a few dozen prompts well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True, eq=False)
class TokenMDP:
    """`rewards[t - 1][x, j]` is r(x, y_<=t) for the depth-t prefix numbered j (t = 1..T)."""

    vocab_size: int
    horizon: int
    rewards: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.horizon < 1:
            raise ValueError(f"need vocab_size >= 2 and horizon >= 1, got {self.vocab_size}, {self.horizon}")
        if len(self.rewards) != self.horizon:
            raise ValueError(f"{len(self.rewards)} reward arrays for horizon {self.horizon}")
        n_prompts = self.rewards[0].shape[0]
        for depth, r in enumerate(self.rewards, start=1):
            if r.shape != (n_prompts, self.vocab_size**depth):
                raise ValueError(f"rewards at depth {depth} have shape {r.shape}, "
                                 f"expected {(n_prompts, self.vocab_size ** depth)}")

    @property
    def n_prompts(self) -> int:
        return int(self.rewards[0].shape[0])

    def reward(self, prompt: int, tokens: Sequence[int]) -> float:
        """r(x, y_<=t) of one prefix given as tokens (t >= 1)."""
        return float(self.rewards[len(tokens) - 1][prompt, prefix_index(tokens, self.vocab_size)])


def prefix_index(tokens: Sequence[int], vocab_size: int) -> int:
    index = 0
    for token in tokens:
        if not 0 <= token < vocab_size:
            raise ValueError(f"token {token} outside the vocabulary of size {vocab_size}")
        index = index * vocab_size + int(token)
    return index


def prefix_tokens(index: int, depth: int, vocab_size: int) -> tuple[int, ...]:
    tokens = []
    for _ in range(depth):
        index, token = divmod(index, vocab_size)
        tokens.append(token)
    return tuple(reversed(tokens))


def prefix_digits(depth: int, vocab_size: int) -> np.ndarray:
    """(V**depth, depth) array: row j holds the tokens of the depth-`depth` prefix numbered j."""
    j = np.arange(vocab_size**depth)
    powers = vocab_size ** np.arange(depth - 1, -1, -1)
    return (j[:, None] // powers[None, :]) % vocab_size


@dataclass(frozen=True, eq=False)
class Values:
    """v[t]: (n_prompts, V**t) for t = 0..T (v[T] = 0); q[t]: (n_prompts, V**t, V) for t = 0..T-1."""

    v: tuple[np.ndarray, ...]
    q: tuple[np.ndarray, ...]

    def greedy(self) -> tuple[np.ndarray, ...]:
        """argmax_a q[t] per depth; ties go to the lowest token id (numpy's argmax rule)."""
        return tuple(q.argmax(-1) for q in self.q)


def _backward(mdp: TokenMDP, allowed: Sequence[np.ndarray] | None) -> Values:
    P, V, T = mdp.n_prompts, mdp.vocab_size, mdp.horizon
    v_next = np.zeros((P, V**T))
    vs, qs = [v_next], []
    for t in range(T - 1, -1, -1):
        q = (mdp.rewards[t] + v_next).reshape(P, V**t, V)
        if allowed is not None:
            if not allowed[t].any(-1).all():
                raise ValueError(f"some depth-{t} state allows no token")
            q = np.where(allowed[t], q, -np.inf)
        v_next = q.max(-1)
        vs.append(v_next)
        qs.append(q)
    return Values(tuple(reversed(vs)), tuple(reversed(qs)))


def optimal_values(mdp: TokenMDP) -> Values:
    """V* and Q* of every state by backward induction over depths."""
    return _backward(mdp, None)


def restricted_optimum(mdp: TokenMDP, allowed: Sequence[np.ndarray]) -> Values:
    """The best values when only `allowed[t]` (bool, (n_prompts, V**t, V)) tokens may be emitted.

    With allowed = {the experts' greedy tokens} this is the best purely token-level routing rule
    that knows the rewards (an oracle router): no routing rule can do better. Disallowed tokens
    get q = -inf, so `greedy()` of the result never picks one.
    """
    return _backward(mdp, allowed)


def returns_so_far(mdp: TokenMDP) -> tuple[np.ndarray, ...]:
    """R(x, y_<=t) = sum_{i<=t} r(x, y_<=i) for every prefix, (n_prompts, V**t) per depth t = 0..T."""
    out = [np.zeros((mdp.n_prompts, 1))]
    for t in range(mdp.horizon):
        out.append(np.repeat(out[-1], mdp.vocab_size, axis=1) + mdp.rewards[t])
    return tuple(out)


@dataclass(frozen=True)
class Rollout:
    tokens: tuple[int, ...]
    indices: tuple[int, ...]  # the prefix number of the state at depth 0..T (index 0 at depth 0)
    total: float  # R(x, y_<=T): the value of a deterministic policy at x


def right_fold(rewards: Sequence):
    """r_1 + (r_2 + (... + (r_T + 0))): the order in which the backward pass adds a response's
    rewards, so that a policy that follows pi* gets a return bit-identical to V* (a gap of exactly
    0, not a rounding residue). Works on floats and on numpy arrays alike."""
    total = 0.0
    for r in reversed(rewards):
        total = r + total
    return total


def rollout(mdp: TokenMDP, prompt: int, policy) -> Rollout:
    """Run a deterministic policy `policy(prompt, depth, index) -> token` for T steps from x."""
    index, rewards, tokens, indices = 0, [], [], [0]
    for depth in range(mdp.horizon):
        token = int(policy(prompt, depth, index))
        if not 0 <= token < mdp.vocab_size:
            raise ValueError(f"policy emitted token {token} outside the vocabulary")
        index = index * mdp.vocab_size + token
        rewards.append(float(mdp.rewards[depth][prompt, index]))
        tokens.append(token)
        indices.append(index)
    return Rollout(tuple(tokens), tuple(indices), float(right_fold(rewards)))


def table_policy(table: Sequence[np.ndarray]):
    """A deterministic policy from per-depth token arrays (n_prompts, V**t), e.g. Values.greedy()."""
    return lambda prompt, depth, index: int(table[depth][prompt, index])


def policy_values(mdp: TokenMDP, probs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """V^pi for a stochastic policy: probs[t] is (n_prompts, V**t, V), rows summing to one."""
    P, V, T = mdp.n_prompts, mdp.vocab_size, mdp.horizon
    v_next = np.zeros((P, V**T))
    out = [v_next]
    for t in range(T - 1, -1, -1):
        q = (mdp.rewards[t] + v_next).reshape(P, V**t, V)
        v_next = (probs[t] * q).sum(-1)
        out.append(v_next)
    return tuple(reversed(out))


def state_distribution(mdp: TokenMDP, probs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """P(y_<=t | x) under a stochastic policy, (n_prompts, V**t) per depth t = 0..T."""
    out = [np.ones((mdp.n_prompts, 1))]
    for t in range(mdp.horizon):
        out.append((out[-1][:, :, None] * probs[t]).reshape(mdp.n_prompts, -1))
    return tuple(out)

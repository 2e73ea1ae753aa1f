"""Theorem 4.3's construction (the paper's Appendix A), built as written, and every routing rule on it.

The family. One prompt, responses of T tokens (T even), n deterministic experts, vocabulary
{0, ..., n}: expert i emits token i at every state, and token n (FREE) is emitted by no expert and
is what pi* uses. A path p = (n_1, ..., n_k) of expert choices spells the response y^p = p, so
the expert-generated prefixes are exactly the prefixes without FREE. For every p in [n]^(T/2)
the MDP M_p has reward
  - 1 - epsilon on the first token when an expert produced it,
  - 1 on an expert prefix of length T/2 + i (i >= 1) that starts with p,
  - 1 - Delta on an expert prefix of length T/2 + 1 that does not start with p,
  - 0 on an expert prefix of length >= T/2 + 2 that does not start with p,
  - 1 everywhere else (every prefix containing FREE, expert prefixes of length 2..T/2).
So V* = T in every M_p (FREE first, then anything), a routing path that starts with p returns
T - epsilon, and every other routing path returns T/2 + 1 - Delta - epsilon.

The learner. At a visited state (x, y_<=t) a routing rule sees the theorem's observation
  o_t = (x, y_<=t, [Q*(x, y_<=k) for k = 1..t], [Q*(x, y_<=t, y) for y in the vocabulary])
and names an expert, whose token is appended. "Every routing rule" means concretely: every
function from observation histories (o_0, ..., o_t) to [n] (deterministic rules), and every
probability distribution over those functions (randomised rules; with perfect recall these are
all behaviour strategies, by Kuhn's theorem). A rule that sees only the current o_t is one of
them; `solve_game` also checks that on this family no o_t is reached through two different
histories, so the two classes coincide here. Two rules that act alike on every observation
history that can occur in some M_p are the same rule for this purpose; `RuleGame.n_rules` counts
the rules up to that identification (it is exact, not a bound), and `solve_game` evaluates all of
them at once by backward induction over the tree of observation histories: a node holds the
members of the family that are still consistent with what was observed, and its value is the set
of value vectors (one entry per consistent member) that some rule achieves from there; children
that are told apart by the next observation combine as a Cartesian product, because a rule
chooses independently at different histories. Dominated vectors are dropped (no max-min or
mixture prefers them), which keeps the sets to n^(T/2) vectors. `enumerate_rules` is the same
walk without the pruning, listing every rule's vector, for a brute-force cross-check.

epsilon and Delta default to dyadic fractions (1/8, 1/4): every value here is then a sum of
dyadic numbers that float64 represents exactly, so equalities such as V* - best = T/2 - 1 + Delta
+ epsilon hold bit for bit.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from fusionroute.theory.mdp import TokenMDP, Values, optimal_values, prefix_digits, restricted_optimum, returns_so_far


@dataclass(frozen=True)
class AppendixAConfig:
    n_experts: int
    horizon: int  # T, even
    epsilon: float = 0.125
    delta: float = 0.25

    def __post_init__(self) -> None:
        if self.n_experts < 2:
            raise ValueError("the construction needs at least two experts")
        if self.horizon < 2 or self.horizon % 2:
            raise ValueError(f"the construction needs an even horizon T >= 2, got {self.horizon}")
        # epsilon > 0 keeps the prefixes after a wrong turn out of the generalisation-coverage set
        # (with epsilon = 0 Eq. 10 would fail there); epsilon <= Delta is the theorem's premise
        if not 0 < self.epsilon <= self.delta <= 1:
            raise ValueError(f"need 0 < epsilon <= Delta <= 1, got epsilon={self.epsilon}, Delta={self.delta}")

    @property
    def half(self) -> int:
        return self.horizon // 2

    @property
    def vocab_size(self) -> int:
        return self.n_experts + 1

    @property
    def free_token(self) -> int:
        return self.n_experts


def paths(cfg: AppendixAConfig) -> list[tuple[int, ...]]:
    """P_{T/2}: every sequence of T/2 expert choices, in lexicographic order."""
    return list(itertools.product(range(cfg.n_experts), repeat=cfg.half))


@functools.lru_cache(maxsize=64)
def _digits(depth: int, vocab_size: int) -> np.ndarray:
    """prefix_digits, computed once per shape for all members (read-only: it is shared)."""
    digits = prefix_digits(depth, vocab_size)
    digits.setflags(write=False)
    return digits


def member(cfg: AppendixAConfig, p: tuple[int, ...]) -> TokenMDP:
    """M_p, the member of the family that rewards the routing paths starting with p."""
    if len(p) != cfg.half or not all(0 <= i < cfg.n_experts for i in p):
        raise ValueError(f"{p} is not a path of {cfg.half} expert choices")
    rewards = []
    for k in range(1, cfg.horizon + 1):
        digits = _digits(k, cfg.vocab_size)
        on_tree = (digits < cfg.n_experts).all(1)  # an expert-generated prefix
        r = np.ones(len(digits))
        if k == 1:
            r[on_tree] = 1 - cfg.epsilon
        if k > cfg.half:
            off_p = on_tree & ~(digits[:, : cfg.half] == np.array(p)).all(1)
            r[off_p] = 1 - cfg.delta if k == cfg.half + 1 else 0.0
        rewards.append(r[None, :])
    return TokenMDP(cfg.vocab_size, cfg.horizon, tuple(rewards))


@dataclass(frozen=True, eq=False)
class Family:
    paths: list[tuple[int, ...]]
    mdps: list[TokenMDP]
    values: list[Values]


@functools.lru_cache(maxsize=2)
def family(cfg: AppendixAConfig) -> Family:
    """Every member and its exact values, built once per config (the game, the checks, the named
    rules and the learned routers all read the same family). Arrays are read-only: they are shared."""
    ps = paths(cfg)
    mdps = [member(cfg, p) for p in ps]
    values = [optimal_values(m) for m in mdps]
    for array in itertools.chain(*(m.rewards for m in mdps), *(v.v + v.q for v in values)):
        array.setflags(write=False)
    return Family(ps, mdps, values)


def expert_allowed(cfg: AppendixAConfig) -> tuple[np.ndarray, ...]:
    """allowed[t]: the tokens some expert can emit at depth-t states (the experts' tokens)."""
    mask = np.arange(cfg.vocab_size) < cfg.n_experts
    return tuple(np.broadcast_to(mask, (1, cfg.vocab_size**t, cfg.vocab_size)) for t in range(cfg.horizon))


# ---------------------------------------------------------------------------------------------
# the theorem's assumptions, checked on one member


@dataclass(frozen=True)
class AssumptionCheck:
    v_star: float
    best_routing_gap: float  # Eq. 8: V* - (best routing path's return); the theorem needs <= Delta
    single_policy_coverage: float  # Eq. 9: max over pi*'s states of |max_i Q*(s, pi_i(s)) - V*(s)|
    generalization_coverage: float  # Eq. 10: the same max over every prefix that can still reach V* - Delta
    n_good_prefixes: int

    def holds(self, delta: float) -> bool:
        return max(self.best_routing_gap, self.single_policy_coverage, self.generalization_coverage) <= delta


def check_assumptions(cfg: AppendixAConfig, mdp: TokenMDP, values: Values) -> AssumptionCheck:
    n = cfg.n_experts
    # with deterministic experts, max_i E_{y ~ pi_i} Q*(s, y) is the best Q* over the experts' tokens
    expert_gap = [np.abs(q[0, :, :n].max(-1) - v[0]) for q, v in zip(values.q, values.v)]
    v_star = float(values.v[0][0, 0])
    best_routing = float(restricted_optimum(mdp, expert_allowed(cfg)).v[0][0, 0])
    greedy, index, on_policy = values.greedy(), 0, 0.0
    for t in range(cfg.horizon):
        on_policy = max(on_policy, float(expert_gap[t][index]))
        index = index * cfg.vocab_size + int(greedy[t][0, index])
    so_far = returns_so_far(mdp)
    worst_good, n_good = 0.0, 0
    for t in range(cfg.horizon):
        good = so_far[t][0] + values.v[t][0] >= v_star - cfg.delta
        n_good += int(good.sum())
        worst_good = max(worst_good, float(expert_gap[t][good].max(initial=0.0)))
    return AssumptionCheck(v_star, v_star - best_routing, on_policy, worst_good, n_good)


# ---------------------------------------------------------------------------------------------
# every routing rule, by backward induction over observation histories


@dataclass(frozen=True, eq=False)
class RuleGame:
    config: AppendixAConfig
    members: list[tuple[int, ...]]  # the family's paths p, in the column order of `vectors`
    v_star: float
    vectors: np.ndarray  # (k, |family|) the undominated value vectors over all deterministic rules
    n_rules: int  # behaviourally distinct deterministic rules on the family
    n_histories: int  # decision nodes (observation histories) of the tree
    history_needed: bool  # True if some o_t is reached through two different histories

    @property
    def best_deterministic_value(self) -> float:
        """max over deterministic rules of min over the family of V^rule."""
        return float(self.vectors.min(1).max())

    @property
    def best_deterministic_gap(self) -> float:
        return self.v_star - self.best_deterministic_value

    def best_randomized_value(self) -> float:
        """max over distributions on rules of min over the family of E[V^rule] (an LP)."""
        from scipy.optimize import linprog

        k, m = self.vectors.shape
        # variables: k rule weights, then the guaranteed value v; maximise v
        cost = np.zeros(k + 1)
        cost[-1] = -1.0
        upper = np.hstack([-self.vectors.T, np.ones((m, 1))])  # v - sum_r w_r V_r(M) <= 0
        equal = np.hstack([np.ones((1, k)), np.zeros((1, 1))])
        bounds = [(0, None)] * k + [(None, None)]
        res = linprog(cost, A_ub=upper, b_ub=np.zeros(m), A_eq=equal, b_eq=[1.0], bounds=bounds, method="highs")
        if not res.success:
            raise RuntimeError(f"the max-min LP failed: {res.message}")
        return float(res.x[-1])

    @property
    def theorem_bound_gap(self) -> float:
        """Theorem 4.3: no rule achieves V >= V* - T/2 + 2 on every member, i.e. the best
        worst-case gap is at least T/2 - 2."""
        return self.config.horizon / 2 - 2


def _pareto(vectors: np.ndarray) -> np.ndarray:
    """The undominated rows, duplicates dropped, in first-seen order."""
    if len(vectors) == 1:
        return vectors
    vectors = np.array(list({v.tobytes(): v for v in vectors}.values()))  # np.unique(axis=0) is slow on tiny arrays
    keep = [i for i, v in enumerate(vectors)
            if not ((vectors >= v).all(1) & (vectors > v).any(1)).any()]
    return vectors[keep]


class _Walk:
    """The tree of observation histories over the family (shared by solve_game and enumerate_rules)."""

    def __init__(self, cfg: AppendixAConfig, prune: bool):
        self.cfg, self.prune = cfg, prune
        fam = family(cfg)
        self.members, self.mdps, self.values = fam.paths, fam.mdps, fam.values
        self.memo: dict[tuple, tuple[np.ndarray, int]] = {}
        self.histories_of: dict[tuple, set[tuple[int, ...]]] = {}  # o_t -> the member sets seen with it
        # members stacked per depth, so that a node reads all its members with one fancy index
        self.rewards = [np.stack([m.rewards[t][0] for m in self.mdps]) for t in range(cfg.horizon)]
        # observed[t][m, j] = (Q* of the token that led to j, Q* of every next token): the parts of
        # o_t that can differ between members at the same prefix (Q* of the last token is the newest
        # entry of the path's Q* list; the older entries were compared at the earlier nodes)
        self.observed = []
        for t in range(cfg.horizon + 1):
            last = (self.rewards[t - 1] + np.stack([v.v[t][0] for v in self.values])) if t else np.zeros((len(self.mdps), 1))
            following = (np.stack([v.q[t][0] for v in self.values]) if t < cfg.horizon
                         else np.zeros((*last.shape, 0)))
            self.observed.append(np.concatenate([last[..., None], following], -1))

    def split(self, group: tuple[int, ...], depth: int, index: int, path_q: tuple[float, ...]):
        """Members of `group` told apart by the observation at this state, with their Q* paths."""
        rows = self.observed[depth][list(group), index]
        parts: dict[bytes, list[int]] = {}
        first: dict[bytes, np.ndarray] = {}
        for m, row in zip(group, rows):
            key = row.tobytes()
            parts.setdefault(key, []).append(m)
            first.setdefault(key, row)
        out = []
        for key, ms in parts.items():
            last, following = float(first[key][0]), tuple(first[key][1:].tolist())
            q_path = path_q + ((last,) if depth else ())
            if depth < self.cfg.horizon:
                self.histories_of.setdefault((depth, index, q_path, following), set()).add(tuple(ms))
            out.append((tuple(ms), q_path))
        return out

    def combine(self, group: tuple[int, ...], depth: int, index: int, path_q: tuple[float, ...]):
        """Value vectors (over `group`) from this state before observing it, and the rule count."""
        position = {m: i for i, m in enumerate(group)}
        block, count = np.zeros((1, len(group))), 1
        for part, q_path in self.split(group, depth, index, path_q):
            sub, sub_count = self.node(part, depth, index, q_path)
            cols = [position[m] for m in part]
            grown = np.repeat(block, len(sub), axis=0)
            grown[:, cols] = np.tile(sub, (len(block), 1))
            block, count = grown, count * sub_count
        return block, count

    def node(self, group: tuple[int, ...], depth: int, index: int, path_q: tuple[float, ...]):
        """Value vectors of the rules at one observation history (group = consistent members)."""
        if depth == self.cfg.horizon:
            return np.zeros((1, len(group))), 1
        key = (group, depth, index, path_q)
        if key not in self.memo:
            options, count = [], 0
            for expert in range(self.cfg.n_experts):  # expert i emits token i
                child = index * self.cfg.vocab_size + expert
                reward = self.rewards[depth][list(group), child]
                block, sub_count = self.combine(group, depth + 1, child, path_q)
                options.append(block + reward[None, :])
                count += sub_count
            vectors = np.concatenate(options)
            self.memo[key] = (_pareto(vectors) if self.prune else vectors, count)
        return self.memo[key]

    def root(self) -> tuple[np.ndarray, int]:
        return self.combine(tuple(range(len(self.members))), 0, 0, ())


def solve_game(cfg: AppendixAConfig) -> RuleGame:
    walk = _Walk(cfg, prune=True)
    vectors, n_rules = walk.root()
    v_stars = {float(v.v[0][0, 0]) for v in walk.values}
    if len(v_stars) != 1:
        raise AssertionError(f"V* differs across the family: {sorted(v_stars)}")
    return RuleGame(cfg, walk.members, v_stars.pop(), _pareto(vectors), n_rules, len(walk.histories_of),
                    any(len(groups) > 1 for groups in walk.histories_of.values()))


def enumerate_rules(cfg: AppendixAConfig) -> np.ndarray:
    """(n_rules, |family|): the value vector of every deterministic rule, no pruning (small cases)."""
    return _Walk(cfg, prune=False).root()[0]


def closed_form_gaps(cfg: AppendixAConfig) -> tuple[float, float]:
    """What the construction predicts for the best worst-case gaps (deterministic, randomised).

    A deterministic rule sees the same observations in every member for t < T/2, so it walks the
    same first T/2 routing steps q in all of them and misses every M_p with p != q:
    gap = T - (T/2 + 1 - Delta - epsilon). The best randomised rule spreads uniformly over the
    n^(T/2) first halves, hitting each member with probability n^(-T/2).
    """
    T, miss_gap = cfg.horizon, cfg.horizon / 2 - 1 + cfg.delta + cfg.epsilon
    hit_bonus = T / 2 - 1 + cfg.delta  # (T - epsilon) - (T/2 + 1 - Delta - epsilon)
    return miss_gap, miss_gap - hit_bonus / cfg.n_experts**cfg.half


# ---------------------------------------------------------------------------------------------
# named rules, evaluated on every member


def rollout_rule(cfg: AppendixAConfig, mdp: TokenMDP, values: Values, rule) -> float:
    """Value in `mdp` of `rule(observation) -> expert`, where the observation is the theorem's o_t
    as a tuple (prefix, Q* along the prefix, Q* of every next token)."""
    tokens: list[int] = []
    path_q: list[float] = []
    index, total = 0, 0.0
    for depth in range(cfg.horizon):
        observation = (tuple(tokens), tuple(path_q), tuple(values.q[depth][0, index].tolist()))
        expert = int(rule(observation))
        if not 0 <= expert < cfg.n_experts:
            raise ValueError(f"the rule named expert {expert}; there are {cfg.n_experts}")
        path_q.append(float(values.q[depth][0, index, expert]))
        index = index * cfg.vocab_size + expert
        total += float(mdp.rewards[depth][0, index])
        tokens.append(expert)
    return total


def greedy_q_rule(observation: tuple) -> int:
    """Eq. 5's idealised router: the expert whose token has the largest Q* (lowest id on ties)."""
    next_q = observation[2]
    n_experts = len(next_q) - 1  # the last token is FREE, which no expert emits
    return int(np.argmax(next_q[:n_experts]))


def family_values(cfg: AppendixAConfig, rule) -> np.ndarray:
    """(|family|,) value of a rule in every member."""
    fam = family(cfg)
    return np.array([rollout_rule(cfg, mdp, values, rule) for mdp, values in zip(fam.mdps, fam.values)])


@dataclass(frozen=True)
class LearnedOnFamily:
    """The project's SFT router trained on pi*'s response (the same data in every member: the
    family is indistinguishable from it), decoded routing-only and with Eq. 1, in every member."""

    gap_routing_only: np.ndarray  # (|family|,) V* - V per member
    gap_fusionroute: np.ndarray
    tokens_routing_only: tuple[int, ...]
    tokens_fusionroute: tuple[int, ...]


def learned_on_family(cfg: AppendixAConfig, expert_margin: float, train_cfg) -> LearnedOnFamily:
    """Experts are softmax versions of the deterministic experts (logit `expert_margin` on token i):
    with strictly one-hot experts log pi_expert is -inf off its token and Eq. 1 could never emit
    FREE, so complementary logits need experts with full support."""
    from fusionroute.theory.learned import decode, demonstrations, returns_of, state_independent_experts, train_router

    fam = family(cfg)
    members, values = fam.mdps, fam.values
    demos = demonstrations(members[0], values[0])
    if any(demonstrations(m, v) != demos for m, v in zip(members, values)):
        raise AssertionError("pi*'s response differs across the family; the SFT data would tell members apart")
    experts = state_independent_experts(cfg.n_experts, 1, cfg.vocab_size, cfg.horizon, expert_margin)
    trained = train_router(members[0], experts, demos, train_cfg)
    # the decoders never see rewards, so their responses are the same in every member
    routing = decode(members[0], experts, trained, complementary=False).tokens
    fusion = decode(members[0], experts, trained, complementary=True).tokens
    v_star = np.array([v.v[0][0, 0] for v in values])
    return LearnedOnFamily(v_star - np.array([returns_of(m, routing)[0] for m in members]),
                           v_star - np.array([returns_of(m, fusion)[0] for m in members]),
                           tuple(int(t) for t in routing[0]), tuple(int(t) for t in fusion[0]))

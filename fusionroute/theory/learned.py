"""The learned testbed: fixed experts, a tiny router trained with the project's SFT, two decoders.

World (`make_world`): `n_prompts` prompts, a vocabulary of V tokens, responses of T tokens,
rewards r(x, y_<=t) drawn i.i.d. uniform on [0, 1] for every prefix (so pi* = argmax Q* is
unique with probability one). Experts are fixed softmax policies: expert i gives logit
`expert_margin` to one token per state (its greedy token) and 0 to the others. The coverage knob
`uncovered` is the share of decision states (at every depth separately) where no expert's greedy
token is pi*'s token; at every other state one expert, drawn uniformly, has pi*'s token (each
expert agrees with pi* on its own random part of the state space) and the others have a random
wrong token. `uncovered = 0` is the global coverage of Assumption 4.2 with Delta = 0.

Router (`TabularRouter`): one embedding row per state that occurs in the SFT data and one shared
row for every other state, then a next-token head (the complementary logits) and a routing head,
as the project's RouterModel has an LM head and a routing head over one hidden state. Tabular on
purpose: it learns exactly what the data shows and nothing off it, so off-data behaviour is pure
"no information", the situation of Theorem 4.3.

SFT (`train_router`): D_SFT holds pi*'s response to every prompt (pi* is deterministic, so
sampling y ~ pi*(.|x) always gives that response; x ~ rho uniform is the project's shuffled
`batch_indices`). The loss is the project's Eq. 3 (`fusionroute.trainers.sft_loss_from_output`
with `RoutingConfig()`: lambda = 1/3, literal routing loss on informative positions, expert
features laid out as `fusionroute.features.compute_expert_features` lays them out) and the loop is
the project's `fusionroute.training.train_loop` (AdamW, warm-up + cosine, clipping).

Decoding (`decode`): greedy; at each step e = argmax of the routing logits and the token is the
argmax of `fusionroute.decoding.combine_scores(router_logits, expert_e_logits)` (FusionRoute, Eq. 1) or
of `combine_scores(None, expert_e_logits)` (routing only), as in `fused_generate`. One trained router
per seed serves both decoders, as the workflow's fusionroute_sft and fusionroute_routing_only
share router_sft. Values are exact: a greedy decoder is a deterministic policy, so its value at x
is the return of its one response.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fusionroute.data import IGNORE, batch_indices
from fusionroute.decoding import combine_scores
from fusionroute.losses import gather_logprobs
from fusionroute.router import RouterOutput
from fusionroute.theory.mdp import (TokenMDP, Values, optimal_values, restricted_optimum, right_fold, rollout,
                                    table_policy)
from fusionroute.trainers import RoutingConfig, sft_loss_from_output
from fusionroute.training import OptimConfig, train_loop


# ---------------------------------------------------------------------------------------------
# experts and the world


@dataclass(frozen=True, eq=False)
class Experts:
    """tokens[t]: (n_experts, n_prompts, V**t) greedy token of each expert at each depth-t state.

    Expert i's next-token logits at a state are `margin` on its greedy token and 0 elsewhere: a
    softmax policy whose greedy choice is that token with probability e^m / (e^m + V - 1). A finite
    margin matters for Eq. 1: log pi_router + log pi_expert can only move the argmax to a token the
    expert gives finite log-probability.
    """

    tokens: tuple[np.ndarray, ...]
    margin: float

    @property
    def n_experts(self) -> int:
        return int(self.tokens[0].shape[0])

    def greedy(self, depth: int, prompts: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """(batch, n_experts) greedy tokens at the given depth-`depth` states."""
        return self.tokens[depth][:, prompts, indices].T

    def logits(self, depth: int, prompts: np.ndarray, indices: np.ndarray, vocab_size: int) -> torch.Tensor:
        """(batch, n_experts, V) next-token logits at the given depth-`depth` states."""
        greedy = torch.as_tensor(self.greedy(depth, prompts, indices), dtype=torch.long)
        out = torch.zeros(*greedy.shape, vocab_size)
        return out.scatter_(-1, greedy.unsqueeze(-1), self.margin)


def state_independent_experts(n_experts: int, n_prompts: int, vocab_size: int, horizon: int,
                              margin: float) -> Experts:
    """Expert i always emits token i (the experts of the Appendix A construction)."""
    tokens = tuple(np.broadcast_to(np.arange(n_experts)[:, None, None], (n_experts, n_prompts, vocab_size**t))
                   for t in range(horizon))
    return Experts(tokens, margin)


@dataclass(frozen=True)
class WorldConfig:
    n_prompts: int = 16
    vocab_size: int = 4
    horizon: int = 6  # T
    n_experts: int = 3
    uncovered: float = 0.25  # share of decision states where no expert's greedy token is optimal
    expert_margin: float = 2.0  # expert logit of its greedy token over the other tokens
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.uncovered <= 1.0:
            raise ValueError(f"uncovered is a share in [0, 1], got {self.uncovered}")
        if self.vocab_size < 2 or self.n_experts < 1 or self.n_prompts < 1 or self.horizon < 1:
            raise ValueError(f"degenerate world {self}")


@dataclass(frozen=True, eq=False)
class World:
    config: WorldConfig
    mdp: TokenMDP
    values: Values
    experts: Experts
    uncovered: tuple[np.ndarray, ...]  # bool (n_prompts, V**t): no expert's greedy token is optimal

    def realized_uncovered_share(self) -> float:
        return float(sum(u.sum() for u in self.uncovered) / sum(u.size for u in self.uncovered))


def make_world(cfg: WorldConfig) -> World:
    rng = np.random.default_rng(cfg.seed)
    P, V, T, n = cfg.n_prompts, cfg.vocab_size, cfg.horizon, cfg.n_experts
    mdp = TokenMDP(V, T, tuple(rng.random((P, V ** (t + 1))) for t in range(T)))
    values = optimal_values(mdp)
    optimal = values.greedy()
    tokens, uncovered = [], []
    for t in range(T):
        size = P * V**t
        opt = optimal[t].reshape(size)
        # exactly round(share * states) uncovered states at every depth, so that the knob means the
        # same thing near the prompt (few states) as deep in the response (many states)
        hole = np.zeros(size, dtype=bool)
        hole[rng.permutation(size)[: int(round(cfg.uncovered * size))]] = True
        wrong = (opt[None, :] + rng.integers(1, V, size=(n, size))) % V  # never pi*'s token
        owner = rng.integers(n, size=size)
        chosen = wrong.copy()
        covered = np.flatnonzero(~hole)
        chosen[owner[covered], covered] = opt[covered]
        tokens.append(chosen.reshape(n, P, V**t))
        uncovered.append(hole.reshape(P, V**t))
    return World(cfg, mdp, values, Experts(tuple(tokens), cfg.expert_margin), tuple(uncovered))


# ---------------------------------------------------------------------------------------------
# SFT data, the router and its training


@dataclass(frozen=True)
class Demo:
    prompt: int
    tokens: tuple[int, ...]  # y_1..y_T
    indices: tuple[int, ...]  # prefix number at depth 0..T


def demonstrations(mdp: TokenMDP, values: Values) -> list[Demo]:
    """pi*'s response to every prompt (ties of Q* go to the lowest token id)."""
    policy = table_policy(values.greedy())
    demos = []
    for x in range(mdp.n_prompts):
        run = rollout(mdp, x, policy)
        demos.append(Demo(x, run.tokens, run.indices))
    return demos


class TabularRouter(nn.Module):
    """Row r of `embed` is the hidden state of the r-th state seen in training (row 0: all others)."""

    def __init__(self, n_rows: int, vocab_size: int, n_experts: int, dim: int, seed: int):
        super().__init__()
        self.embed = nn.Embedding(n_rows, dim)
        # like the final norm of the LM whose last hidden state the project's routing head reads; it
        # also keeps the LM loss from inflating the shared embedding, which saturates the routing
        # softmax before routing is learned
        self.norm = nn.RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size)
        self.routing_head = nn.Linear(dim, n_experts, bias=False)
        # our own generator: construction draws nothing from torch's global RNG
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not name.startswith("norm."):  # the norm's gain stays at one
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)

    def forward(self, rows: torch.Tensor) -> RouterOutput:
        hidden = self.norm(self.embed(rows))
        return RouterOutput(logits=self.lm_head(hidden), routing_logits=self.routing_head(hidden))


@dataclass(frozen=True)
class RouterTrainConfig:
    steps: int = 100
    batch_size: int = 16
    # At 0.05 a few states' routing softmax locked onto a wrong expert within the first steps and
    # stayed there: the literal routing loss -sum_i w_i log pi_i(y) moves the correct expert's logit
    # in proportion to its weight w_i, so a confidently wrong router gets almost no gradient. At
    # 0.02 every routing decision on the SFT states is fitted in our sweeps (`routing_accuracy`).
    lr: float = 0.02
    dim: int = 16
    seed: int = 0


@dataclass(eq=False)
class TrainedRouter:
    router: TabularRouter
    rows: dict[tuple[int, int, int], int]  # (depth, prompt, prefix number) -> embedding row
    log: list[dict]

    def row_ids(self, depth: int, prompts: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        return torch.tensor([self.rows.get((depth, int(x), int(j)), 0) for x, j in zip(prompts, indices)])


def expert_features(mdp: TokenMDP, experts: Experts, demos: list[Demo]) -> list[dict[str, torch.Tensor]]:
    """Per demo, what `compute_expert_features` stores: each expert's log-prob of the gold next
    token ("gold", (T, n) float32) and its argmax token ("argmax", (T, n) int32)."""
    out = []
    for d in demos:
        logits = torch.cat([experts.logits(t, np.array([d.prompt]), np.array([d.indices[t]]), mdp.vocab_size)
                            for t in range(mdp.horizon)])  # (T, n, V)
        targets = torch.tensor(d.tokens).unsqueeze(-1).expand(-1, experts.n_experts)
        out.append({"gold": gather_logprobs(logits, targets).float(), "argmax": logits.argmax(-1).int()})
    return out


def train_router(mdp: TokenMDP, experts: Experts, demos: list[Demo], cfg: RouterTrainConfig) -> TrainedRouter:
    """Eq. 3 SFT of a fresh TabularRouter on the demos, with the project's loss and loop."""
    rows: dict[tuple[int, int, int], int] = {}
    for d in demos:
        for t, j in enumerate(d.indices):
            rows.setdefault((t, d.prompt, j), len(rows) + 1)
    # a sequence is the prompt state then the T response states; labels[0] = IGNORE (the prompt),
    # so after the project's shift position t's logits are trained on y_{t+1}
    row_ids = torch.tensor([[rows[(t, d.prompt, j)] for t, j in enumerate(d.indices)] for d in demos])
    labels = torch.tensor([[IGNORE, *d.tokens] for d in demos])
    features = expert_features(mdp, experts, demos)
    router = TabularRouter(len(rows) + 1, mdp.vocab_size, experts.n_experts, cfg.dim, cfg.seed)
    optim = OptimConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    schedule = list(batch_indices(len(demos), cfg.batch_size, cfg.steps, cfg.seed))
    routing = RoutingConfig()  # lambda = 1/3, the literal reading: the project's defaults

    def micro_loss(micro: list[int], live: dict[str, nn.Module]) -> torch.Tensor:
        out = live["router"](row_ids[micro])
        return sft_loss_from_output(out, {"labels": labels[micro]}, [features[i] for i in micro], routing)[0]

    result = train_loop({"router": router}, schedule, micro_loss, optim, "theory router SFT")
    router.eval()
    return TrainedRouter(router, rows, result.log)


# ---------------------------------------------------------------------------------------------
# decoding and evaluation


@dataclass(frozen=True)
class Decoded:
    tokens: np.ndarray  # (n_prompts, T)
    experts: np.ndarray  # (n_prompts, T) the routed expert per step
    returns: np.ndarray  # (n_prompts,) R(x, y_<=T) in the decoding MDP


@torch.no_grad()
def decode(mdp: TokenMDP, experts: Experts, trained: TrainedRouter, complementary: bool) -> Decoded:
    """Greedy Eq. 1 decoding of every prompt (routing only when `complementary` is False)."""
    P, V = mdp.n_prompts, mdp.vocab_size
    prompts, indices = np.arange(P), np.zeros(P, dtype=np.int64)
    rewards, tokens, chosen = [], [], []
    for t in range(mdp.horizon):
        out = trained.router(trained.row_ids(t, prompts, indices))
        expert = out.routing_logits.argmax(-1)
        expert_logits = experts.logits(t, prompts, indices, V)[torch.arange(P), expert]
        score = combine_scores(out.logits if complementary else None, expert_logits)
        token = score.argmax(-1).numpy()
        indices = indices * V + token
        rewards.append(mdp.rewards[t][prompts, indices])
        tokens.append(token)
        chosen.append(expert.numpy())
    return Decoded(np.stack(tokens, 1), np.stack(chosen, 1), right_fold(rewards))


def returns_of(mdp: TokenMDP, tokens: np.ndarray) -> np.ndarray:
    """R(x, y) of fixed responses (n_prompts, T) in another MDP with the same vocabulary."""
    index = np.zeros(len(tokens), dtype=np.int64)
    rewards = []
    for t in range(mdp.horizon):
        index = index * mdp.vocab_size + tokens[:, t]
        rewards.append(mdp.rewards[t][np.arange(len(tokens)), index])
    return right_fold(rewards)


def eq5_routing_table(values: Values, experts: Experts) -> tuple[np.ndarray, ...]:
    """The idealised router of Eq. 5: at every state the expert whose greedy token has the largest
    Q*, emitting that token (ties to the lowest expert id)."""
    table = []
    for q, tokens in zip(values.q, experts.tokens):
        q_expert = np.take_along_axis(q[None], tokens[..., None], axis=-1)[..., 0]  # (n, P, S)
        best = q_expert.argmax(0)
        table.append(np.take_along_axis(tokens, best[None], axis=0)[0])
    return tuple(table)


def expert_token_mask(mdp: TokenMDP, experts: Experts) -> tuple[np.ndarray, ...]:
    """allowed[t]: (n_prompts, V**t, V) True for the tokens some expert emits greedily."""
    out = []
    for tokens in experts.tokens:
        allowed = np.zeros((*tokens.shape[1:], mdp.vocab_size), dtype=bool)
        for i in range(tokens.shape[0]):
            np.put_along_axis(allowed, tokens[i][..., None], True, axis=-1)
        out.append(allowed)
    return tuple(out)


def oracle_routing_values(mdp: TokenMDP, experts: Experts) -> np.ndarray:
    """(n_prompts,) value of the best routing rule knowing the rewards: the most any routing-only
    decoder (learned or not) can reach."""
    return restricted_optimum(mdp, expert_token_mask(mdp, experts)).v[0][:, 0]


def exposed_prompts(world: World, demos: list[Demo]) -> np.ndarray:
    """(n_prompts,) True where pi*'s response passes an uncovered state (at depth 0..T-1)."""
    return np.array([any(world.uncovered[t][d.prompt, d.indices[t]] for t in range(world.mdp.horizon))
                     for d in demos])


@dataclass(frozen=True)
class WorldResult:
    v_star: float  # mean over prompts of V*(x)
    gap_routing_only: float  # mean of V*(x) - V(x), learned router decoded without its logits
    gap_fusionroute: float  # the same router decoded with Eq. 1
    gap_routing_eq5: float  # the idealised Eq. 5 router (knows Q*)
    gap_routing_oracle: float  # the best routing rule (knows the rewards)
    prompts_routing_only_suboptimal: float  # share of prompts with a positive gap
    prompts_fusionroute_suboptimal: float
    prompts_exposed: float  # share of prompts whose pi* response meets an uncovered state
    uncovered_share: float  # realised share of uncovered decision states
    router_token_accuracy: float  # router LM argmax == pi*'s token, over the SFT states
    routing_accuracy: float | None  # routed expert's greedy token == pi*'s, over the covered SFT states (None: none)
    router_min_margin: float  # min over SFT states of log pi_router(y*) - max_other log pi_router
    final_loss: float
    per_prompt: dict  # per-prompt gaps and flags, for tests and inspection


def evaluate(world: World, train_cfg: RouterTrainConfig) -> WorldResult:
    mdp, values, experts = world.mdp, world.values, world.experts
    demos = demonstrations(mdp, values)
    trained = train_router(mdp, experts, demos, train_cfg)
    v_star = values.v[0][:, 0]
    routing = decode(mdp, experts, trained, complementary=False)
    fusion = decode(mdp, experts, trained, complementary=True)
    eq5 = np.array([rollout(mdp, x, table_policy(eq5_routing_table(values, experts))).total
                    for x in range(mdp.n_prompts)])
    oracle = oracle_routing_values(mdp, experts)
    accuracy, margin, routing_accuracy = _router_fit(trained, demos, experts, world.uncovered)
    gaps = {"routing_only": v_star - routing.returns, "fusionroute": v_star - fusion.returns,
            "routing_eq5": v_star - eq5, "routing_oracle": v_star - oracle}
    exposed = exposed_prompts(world, demos)
    return WorldResult(
        v_star=float(v_star.mean()),
        gap_routing_only=float(gaps["routing_only"].mean()),
        gap_fusionroute=float(gaps["fusionroute"].mean()),
        gap_routing_eq5=float(gaps["routing_eq5"].mean()),
        gap_routing_oracle=float(gaps["routing_oracle"].mean()),
        prompts_routing_only_suboptimal=float((gaps["routing_only"] > 0).mean()),
        prompts_fusionroute_suboptimal=float((gaps["fusionroute"] > 0).mean()),
        prompts_exposed=float(exposed.mean()),
        uncovered_share=world.realized_uncovered_share(),
        router_token_accuracy=accuracy,
        routing_accuracy=routing_accuracy,
        router_min_margin=margin,
        final_loss=float(trained.log[-1]["loss"]),
        per_prompt={**{k: v.tolist() for k, v in gaps.items()}, "exposed": exposed.tolist()},
    )


@torch.no_grad()
def _router_fit(trained: TrainedRouter, demos: list[Demo], experts: Experts,
                uncovered: tuple[np.ndarray, ...]) -> tuple[float, float, float | None]:
    """How well SFT fitted its own data: the router's token accuracy and smallest log-prob margin,
    and its routing accuracy on the SFT states where some expert has pi*'s token."""
    states = [(t, d.prompt, d.indices[t]) for d in demos for t in range(len(d.tokens))]
    rows = torch.tensor([trained.rows[s] for s in states])
    gold = torch.tensor([tok for d in demos for tok in d.tokens])
    out = trained.router(rows)
    logp = out.logits.log_softmax(-1)
    picked = logp.gather(-1, gold[:, None])[:, 0]
    other = logp.scatter(-1, gold[:, None], -float("inf")).max(-1).values
    routed = out.routing_logits.argmax(-1).tolist()
    hits = [int(experts.tokens[t][e, x, j]) == int(g)
            for (t, x, j), e, g in zip(states, routed, gold.tolist()) if not uncovered[t][x, j]]
    routing_accuracy = float(np.mean(hits)) if hits else None
    return float((logp.argmax(-1) == gold).float().mean()), float((picked - other).min()), routing_accuracy

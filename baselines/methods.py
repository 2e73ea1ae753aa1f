"""Registry entries of the reward-model baselines (config `kind: sequence_selection | collab`).

inputs: {"experts": [model sources], "reward_model": model source (saved RM dir or hub id)};
    collab also takes an optional "reference": the pi_ref of its KL term (same vocabulary)
params (both): optional "prompt_template" (overrides the world's template, `ctx.prompt_template`,
    which recovers the instruction the reward model scores against: a reward model sees the
    question and the answer in its own format, never the policies' Alpaca wrapping),
    "reward_format" ("auto" | "template" | "chat", see baselines.reward), "reward_batch_size".
params (collab): "top_k", "lookahead", "weight", "alpha" (see baselines.collab.CollabParams).
The experts must share the tokenizer `ctx.tokenizer` (policy: fusionroute.vocab); the reward model
brings its own.
The merges (DARE, TaskArithmetic) are plain models once built and use the single-model method.
"""
from __future__ import annotations

from typing import Any

from baselines.collab import Collab, CollabParams
from baselines.reward import RewardScorer
from baselines.sequence_selection import SequenceSelection
from fusionroute.experts import ExpertPool
from fusionroute.generation import MethodContext, register_method
from fusionroute.models import load_causal_lm

COMMON_PARAMS = {"prompt_template", "reward_format", "reward_batch_size"}
COLLAB_PARAMS = {"top_k", "lookahead", "weight", "alpha"}


def _load_common(ctx: MethodContext, allowed: set[str], extra_models: dict | None = None):
    unknown = set(ctx.params) - allowed
    if unknown:
        raise ValueError(f"{ctx.kind}: unknown params {sorted(unknown)}; allowed {sorted(allowed)}")
    missing = {"experts", "reward_model"} - set(ctx.inputs)
    if missing:
        raise ValueError(f"{ctx.kind}: inputs lack {sorted(missing)}")
    expert_specs: list[Any] = list(ctx.inputs["experts"])
    if not expert_specs:
        raise ValueError(f"{ctx.kind}: needs at least one expert")
    names = [s if isinstance(s, str) else str(s) for s in expert_specs]
    pool = ExpertPool.load(names, expert_specs, ctx.tokenizer, ctx.dtype, ctx.device, extra_models=extra_models)
    scorer = RewardScorer.from_pretrained(
        ctx.inputs["reward_model"], dtype=ctx.dtype, device=ctx.device,
        fmt=ctx.params.get("reward_format", "auto"), prompt_template=ctx.params.get("prompt_template"),
        batch_size=int(ctx.params.get("reward_batch_size", 16)),
    )
    return pool, scorer


def _world_template(ctx: MethodContext) -> str | None:
    return ctx.params.get("prompt_template") or ctx.prompt_template


@register_method("sequence_selection")
def build_sequence_selection(ctx: MethodContext) -> SequenceSelection:
    pool, scorer = _load_common(ctx, COMMON_PARAMS)
    return SequenceSelection(pool.models, pool.tokenizer, scorer, prompt_template=_world_template(ctx), vocab=pool.vocab)


@register_method("collab")
def build_collab(ctx: MethodContext) -> Collab:
    reference = None
    if ctx.inputs.get("reference") is not None:
        reference = load_causal_lm(ctx.inputs["reference"], ctx.dtype, ctx.device)
    pool, scorer = _load_common(ctx, COMMON_PARAMS | COLLAB_PARAMS,
                                extra_models={"reference": reference} if reference is not None else None)
    params = CollabParams(**{k: ctx.params[k] for k in COLLAB_PARAMS if k in ctx.params})
    params = CollabParams(top_k=int(params.top_k), lookahead=int(params.lookahead), weight=float(params.weight),
                          alpha=float(params.alpha))
    return Collab(pool.models, pool.tokenizer, scorer, params, prompt_template=_world_template(ctx), vocab=pool.vocab,
                  reference=reference)

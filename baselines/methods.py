"""Registry entries of the reward-model baselines (config `kind: sequence_selection | collab`).

inputs: {"experts": [model sources], "reward_model": model source (saved RM dir or hub id)}
params (both): optional "prompt_template" (the world's template; used to recover the instruction
    the reward model scores against - default: the template a trained tiny RM saved),
    "reward_format" ("auto" | "template" | "chat", see baselines.reward), "reward_batch_size".
params (collab): "top_k", "lookahead", "weight" (see baselines.collab.CollabParams).
The experts must share the tokenizer `ctx.tokenizer`; the reward model brings its own.
The merges (DARE, TaskArithmetic) are plain models once built and use the single-model method.
"""
from __future__ import annotations

from typing import Any

from baselines.collab import Collab, CollabParams
from baselines.reward import RewardScorer
from baselines.sequence_selection import SequenceSelection, check_shared_vocabulary
from fusionroute.generation import MethodContext, register_method
from fusionroute.models import load_causal_lm, load_tokenizer

COMMON_PARAMS = {"prompt_template", "reward_format", "reward_batch_size"}
COLLAB_PARAMS = {"top_k", "lookahead", "weight"}


def _load_common(ctx: MethodContext, allowed: set[str]):
    unknown = set(ctx.params) - allowed
    if unknown:
        raise ValueError(f"{ctx.kind}: unknown params {sorted(unknown)}; allowed {sorted(allowed)}")
    missing = {"experts", "reward_model"} - set(ctx.inputs)
    if missing:
        raise ValueError(f"{ctx.kind}: inputs lack {sorted(missing)}")
    expert_specs: list[Any] = list(ctx.inputs["experts"])
    if not expert_specs:
        raise ValueError(f"{ctx.kind}: needs at least one expert")
    tokenizer = load_tokenizer(ctx.tokenizer)
    experts = [load_causal_lm(spec, dtype=ctx.dtype, device=ctx.device) for spec in expert_specs]
    check_shared_vocabulary(tokenizer, experts, [s if isinstance(s, str) else str(s) for s in expert_specs])
    scorer = RewardScorer.from_pretrained(
        ctx.inputs["reward_model"], dtype=ctx.dtype, device=ctx.device,
        fmt=ctx.params.get("reward_format", "auto"), prompt_template=ctx.params.get("prompt_template"),
        batch_size=int(ctx.params.get("reward_batch_size", 16)),
    )
    return experts, tokenizer, scorer


@register_method("sequence_selection")
def build_sequence_selection(ctx: MethodContext) -> SequenceSelection:
    experts, tokenizer, scorer = _load_common(ctx, COMMON_PARAMS)
    return SequenceSelection(experts, tokenizer, scorer, prompt_template=ctx.params.get("prompt_template"))


@register_method("collab")
def build_collab(ctx: MethodContext) -> Collab:
    experts, tokenizer, scorer = _load_common(ctx, COMMON_PARAMS | COLLAB_PARAMS)
    params = CollabParams(**{k: ctx.params[k] for k in COLLAB_PARAMS if k in ctx.params})
    params = CollabParams(top_k=int(params.top_k), lookahead=int(params.lookahead), weight=float(params.weight))
    return Collab(experts, tokenizer, scorer, params, prompt_template=ctx.params.get("prompt_template"))

"""FusionRoute's training phases and the LM trainers the tiny world and the baselines share.

- `train_lm`: next-token loss only (tiny base pretraining, the experts, the fine-tuned model's SFT).
- `train_router_sft`: Eq. 3, L_LM + lambda * L_route on informative positions.
- `preference_reference`: the frozen terms of (C)DPO, computed once with the reference model.
- `mix_train`: Algorithm 1. SFT and preference samples share each batch; SFT samples add
  lambda * L_SFT (all parameters, routing head included), preference samples add L_CDPO (the LM
  only; the routing head takes no part in that loss, so it gets no gradient from it). With a
  plain LM policy and no expert bias, the same loop is the fine-tuned baseline's SFT+DPO.
All of them are a `micro_loss` closure handed to `fusionroute.training.train_loop`, which owns
batching, sharding across processes and the optimiser; each returns the loop's TrainResult.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from fusionroute.data import Encoded, batch_indices, collate
from fusionroute.features import scatter_to_positions
from fusionroute.losses import (
    cdpo_bias,
    dpo_loss,
    informative_mask,
    lm_loss,
    routing_loss,
    sequence_logprob,
    shift,
)
from fusionroute.router import RouterModel, RouterOutput
from fusionroute.training import OptimConfig, TrainResult, train_loop


def _lengths(encoded: Sequence[Encoded]) -> list[int]:
    return [len(e.input_ids) for e in encoded]


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def train_lm(
    model: PreTrainedModel, encoded: Sequence[Encoded], cfg: OptimConfig, pad_token_id: int, desc: str,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Plain next-token training on the labelled positions of `encoded`."""
    model.train()
    schedule = list(batch_indices(len(encoded), cfg.batch_size, cfg.steps, cfg.seed, _lengths(encoded)))

    def micro_loss(micro: list[int], live: dict[str, nn.Module]) -> torch.Tensor:
        batch = _to(collate([encoded[i] for i in micro], pad_token_id), model.device)
        logits = live["model"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return lm_loss(logits, batch["labels"])

    result = train_loop({"model": model}, schedule, micro_loss, cfg, desc, checkpoint_dir)
    model.eval()
    return result


@dataclass
class RoutingConfig:
    lam: float = 1 / 3  # lambda of Eq. 3 (weight of the routing loss)
    reading: str = "literal"  # Eq. 2 reading: "literal" or "mixture" (see losses.routing_loss)


def router_sft_loss(
    router: RouterModel,
    batch: dict[str, torch.Tensor],
    features: Sequence[dict[str, torch.Tensor]],
    routing: RoutingConfig,
    experts: Sequence[PreTrainedModel] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_SFT = L_LM + lambda * L_route for one batch (Eq. 3), with its parts for logging."""
    out = router(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return sft_loss_from_output(out, batch, features, routing, experts)


def sft_loss_from_output(
    out: RouterOutput,
    batch: dict[str, torch.Tensor],
    features: Sequence[dict[str, torch.Tensor]],
    routing: RoutingConfig,
    experts: Sequence[PreTrainedModel] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3 from a router forward already made over `batch` (mix training shares one forward
    between SFT rows and preference rows)."""
    language = lm_loss(out.logits, batch["labels"])
    _, targets, target_mask = shift(out.logits, batch["labels"])
    mask_cpu = target_mask.cpu()
    device = out.logits.device
    gold = scatter_to_positions([f["gold"] for f in features], mask_cpu).to(device)
    argmax = scatter_to_positions([f["argmax"] for f in features], mask_cpu).to(device)
    informative = informative_mask(argmax, target_mask)
    full = None
    if routing.reading == "mixture":
        if experts is None:
            raise ValueError("the 'mixture' routing loss needs the experts loaded during training")
        with torch.no_grad():
            full = torch.stack(
                [
                    e(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float().log_softmax(-1)
                    for e in experts
                ],
                dim=-2,
            )
    route = routing_loss(out.routing_logits[:, :-1], gold, informative, routing.reading, full, targets)
    loss = language + routing.lam * route
    return loss, {"lm": float(language.detach()), "route": float(route.detach()), "informative": float(informative.sum())}


def train_router_sft(
    router: RouterModel,
    encoded: Sequence[Encoded],
    features: Sequence[dict[str, torch.Tensor]],
    cfg: OptimConfig,
    routing: RoutingConfig,
    pad_token_id: int,
    experts: Sequence[PreTrainedModel] | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """The SFT phase: every router parameter (LM and routing head) trained on Eq. 3."""
    if len(features) != len(encoded):
        raise ValueError(f"{len(features)} expert-feature rows for {len(encoded)} SFT samples")
    router.train()
    schedule = list(batch_indices(len(encoded), cfg.batch_size, cfg.steps, cfg.seed, _lengths(encoded)))

    def micro_loss(micro: list[int], live: dict[str, nn.Module]) -> torch.Tensor:
        batch = _to(collate([encoded[i] for i in micro], pad_token_id), router.device)
        return router_sft_loss(live["router"], batch, [features[i] for i in micro], routing, experts)[0]

    result = train_loop({"router": router}, schedule, micro_loss, cfg, "router SFT", checkpoint_dir)
    router.eval()
    return result


@dataclass
class PreferencePair:
    chosen: Encoded
    rejected: Encoded


def _pair_batch(pairs: Sequence[PreferencePair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one padded batch (one forward for both, as in TRL)."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id)


@torch.inference_mode()
def preference_reference(
    reference: nn.Module,
    pairs: Sequence[PreferencePair],
    pad_token_id: int,
    beta: float,
    pair_features: Sequence[dict[str, dict[str, torch.Tensor]]] | None = None,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Frozen per-pair terms: reference log-probs of y_w and y_l, and the CDPO expert bias.

    The bias (Eq. 4) needs, at each response position, the log-prob of the gold token under the
    expert that the reference router's routing head selects there; with `pair_features` (each
    expert's gold log-probs, from compute_expert_features) and a RouterModel reference that is a
    lookup. Without features (the fine-tuned baseline's plain DPO) the bias is zero.
    """
    ref_chosen, ref_rejected, bias = [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = _to(_pair_batch(chunk, pad_token_id), next(reference.parameters()).device)
        n = len(chunk)
        out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits, routing_logits = out.logits, getattr(out, "routing_logits", None)
        seq = sequence_logprob(logits, batch["labels"]).float().cpu()
        ref_chosen.append(seq[:n])
        ref_rejected.append(seq[n:])
        if pair_features is None:
            bias.append(torch.zeros(n))
            continue
        if routing_logits is None:
            raise ValueError("the CDPO expert bias needs a RouterModel reference (its routing head picks the expert)")
        _, _, target_mask = shift(logits, batch["labels"])
        target_mask = target_mask.cpu()
        choice = routing_logits[:, :-1].argmax(-1).cpu()
        feats = [pf["chosen"] for pf in pair_features[start : start + n]] + [
            pf["rejected"] for pf in pair_features[start : start + n]
        ]
        expert_seq = []
        for row, feat in enumerate(feats):
            picked = choice[row][target_mask[row]]
            if len(picked) != len(feat["gold"]):
                raise ValueError("preference expert features do not line up with the pairs; recompute them")
            expert_seq.append(feat["gold"].gather(1, picked.long().unsqueeze(1)).sum())
        expert_seq = torch.stack(expert_seq)
        bias.append(cdpo_bias(expert_seq[:n], expert_seq[n:], beta))
    return {"ref_chosen": torch.cat(ref_chosen), "ref_rejected": torch.cat(ref_rejected), "bias": torch.cat(bias)}


@dataclass
class MixConfig:
    lam: float = 1 / 3  # weight of SFT samples' loss (Algorithm 1) and of the routing loss in it
    beta: float = 0.1  # DPO temperature
    reading: str = "literal"  # routing-loss reading for the SFT samples (router policies only)


def mix_train(
    policy: nn.Module,
    sft: Sequence[Encoded],
    sft_features: Sequence[dict[str, torch.Tensor]] | None,
    pairs: Sequence[PreferencePair],
    frozen: dict[str, torch.Tensor],
    cfg: OptimConfig,
    mix: MixConfig,
    pad_token_id: int,
    desc: str,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Algorithm 1 over the random mixture of `sft` and `pairs`.

    For a RouterModel policy, SFT samples use Eq. 3 (LM + routing loss) and update everything;
    preference samples use CDPO through the router's LM logits only. For a plain LM policy (the
    fine-tuned baseline), SFT samples use the LM loss and preference samples plain DPO.
    """
    is_router = isinstance(policy, RouterModel)
    if is_router and sft_features is None:
        raise ValueError("mix training a router needs the SFT samples' expert features")
    routing = RoutingConfig(lam=mix.lam, reading=mix.reading)
    policy.train()
    pool = [("sft", i) for i in range(len(sft))] + [("pref", j) for j in range(len(pairs))]
    lengths = [len(sft[i].input_ids) if kind == "sft" else len(pairs[i].chosen.input_ids) + len(pairs[i].rejected.input_ids)
               for kind, i in pool]
    schedule = list(batch_indices(len(pool), cfg.batch_size, cfg.steps, cfg.seed, lengths))
    device = next(policy.parameters()).device

    def micro_loss(micro: list[int], live: dict[str, nn.Module]) -> torch.Tensor:
        # One forward over SFT rows, chosen rows and rejected rows together: every process then
        # runs exactly one forward per micro-batch whatever its mix (DDP/FSDP need that), and the
        # routing head simply takes no part in the preference rows' loss.
        sft_ids = [pool[k][1] for k in micro if pool[k][0] == "sft"]
        pref_ids = [pool[k][1] for k in micro if pool[k][0] == "pref"]
        rows = [sft[i] for i in sft_ids] + [pairs[j].chosen for j in pref_ids] + [pairs[j].rejected for j in pref_ids]
        batch = _to(collate(rows, pad_token_id), device)
        out = live["policy"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        n_sft, n = len(sft_ids), len(pref_ids)
        loss = torch.zeros((), device=device)
        if n_sft:
            part = {k: v[:n_sft] for k, v in batch.items()}
            if is_router:
                sft_out = RouterOutput(out.logits[:n_sft], out.routing_logits[:n_sft])
                sft_loss, _ = sft_loss_from_output(sft_out, part, [sft_features[i] for i in sft_ids], routing)
            else:
                sft_loss = lm_loss(out.logits[:n_sft], part["labels"])
            loss = loss + mix.lam * sft_loss * n_sft
        if n:
            seq = sequence_logprob(out.logits[n_sft:], batch["labels"][n_sft:])
            idx = torch.tensor(pref_ids)
            pref_loss = dpo_loss(
                seq[:n], seq[n:], frozen["ref_chosen"][idx].to(device), frozen["ref_rejected"][idx].to(device),
                mix.beta, frozen["bias"][idx].to(device),
            )
            loss = loss + pref_loss.sum()
        return loss / len(micro)

    result = train_loop({"policy": policy}, schedule, micro_loss, cfg, desc, checkpoint_dir)
    policy.eval()
    return result

"""FusionRoute's training phases and the LM trainers the tiny world and the baselines share.

- `train_lm`: next-token loss only (tiny base pretraining, the experts, the fine-tuned model's SFT).
- `train_router_sft`: Eq. 3, L_LM + lambda * L_route on informative positions.
- `preference_reference`: the frozen terms of (C)DPO, computed once with the reference model;
  `stored_reference`: the same, stored next to the output and reused (see below).
- `mix_train`: Algorithm 1. SFT and preference samples share each batch; SFT samples add
  lambda * L_SFT (all parameters, routing head included), preference samples add L_CDPO (the LM
  only; the routing head takes no part in that loss, so it gets no gradient from it). With a
  plain LM policy and no expert bias, the same loop is the fine-tuned baseline's SFT+DPO.
All of them are a `micro_loss` closure handed to `fusionroute.training.train_loop`, which owns
batching, sharding across processes and the optimiser; each returns the loop's TrainResult.

Token budget. Each trainer tells the loop its samples' row lengths, so with
`OptimConfig.max_tokens_per_micro_batch` a micro-batch arrives cut into pieces; a piece's loss
is normalised by the counts of the whole micro-batch (trained positions, informative positions,
SFT samples, samples), so the pieces add up to the unbudgeted micro-batch loss.

The stored reference. (C)DPO needs, per pair, the reference model's log-probs of y_w and y_l
and the CDPO expert bias: numbers that never change during training. As TRL's
`precompute_ref_log_probs`, they are computed once, before the policy is loaded, and no
reference model exists during training (the policy is the only model in memory; the frozen terms
are three floats per pair). `stored_reference` keeps them in `<model>.ref_logprobs.pt` next to
the output, under a key hashing every input (the reference model's files, the dtype, the pairs'
tokens, the expert features, beta, the pad id, the loss code): a rerun (a resumed job, or a
change of optimiser settings) reuses them without loading the reference at all, and a change of
any input recomputes them, saying what changed. The reference pass runs in batches of at most
`batch_size` pairs and `max_tokens` padded tokens, and under `accelerate launch` each process
computes a contiguous share of the pairs on its own device; the shares are gathered and the main
process writes the file.
"""
from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from fusionroute import scaling
from fusionroute.data import IGNORE, Encoded, batch_indices, collate, mixed_batch_indices
from fusionroute.features import scatter_to_positions
from fusionroute.losses import (
    cdpo_bias,
    dpo_loss,
    informative_mask,
    lm_loss,
    routing_loss,
    sequence_logprob,
    shift,
    trained_positions,
)
from fusionroute.router import RouterModel, RouterOutput
from fusionroute.training import OptimConfig, StepMetrics, TrainResult, train_loop


def _lengths(encoded: Sequence[Encoded]) -> list[int]:
    return [len(e.input_ids) for e in encoded]


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _device(module: nn.Module) -> torch.device:
    """Where a (possibly wrapped) module computes: its parameters' device, read when needed
    (FSDP moves a model loaded on the CPU to the process's GPU only when it wraps it)."""
    return next(module.parameters()).device


def _informative(feature: dict[str, torch.Tensor]) -> int:
    """Informative positions of one sample (experts' argmax tokens not all equal), as
    `informative_mask` counts them in a batch."""
    argmax = feature["argmax"]
    return int((argmax != argmax[..., :1]).any(-1).sum()) if argmax.numel() else 0


def train_lm(
    model: PreTrainedModel, encoded: Sequence[Encoded], cfg: OptimConfig, pad_token_id: int, desc: str,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Plain next-token training on the labelled positions of `encoded`."""
    model.train()
    schedule = list(batch_indices(len(encoded), cfg.batch_size, cfg.steps, cfg.seed, _lengths(encoded)))

    def forward(rows: list[int], live: dict[str, nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _to(collate([encoded[i] for i in rows], pad_token_id), _device(live["model"]))
        logits = live["model"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits, batch["labels"]

    def pieces_loss(micro: list[int], live: dict[str, nn.Module], pieces: list[list[int]]):
        positions = sum(trained_positions(encoded[i].labels) for i in micro)
        for piece in pieces:
            yield lm_loss(*forward(piece, live), denominator=positions)

    def micro_loss(micro: list[int], live: dict[str, nn.Module], pieces: list[list[int]] | None = None):
        if pieces is not None:
            return pieces_loss(micro, live, pieces)
        return lm_loss(*forward(micro, live))

    result = train_loop({"model": model}, schedule, micro_loss, cfg, desc, checkpoint_dir,
                        rows=lambda i: (len(encoded[i].input_ids),))
    model.eval()
    return result


@dataclass
class RoutingConfig:
    lam: float = 1 / 3  # lambda of Eq. 3 (weight of the routing loss)
    reading: str = "literal"  # Eq. 2 reading: "literal" or "mixture" (see losses.routing_loss)


def router_sft_loss(router: RouterModel, batch: dict[str, torch.Tensor], *args,
                    **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    """L_SFT = L_LM + lambda * L_route for one batch (Eq. 3), with its parts for logging: a router
    forward over `batch`, then `sft_loss_from_output` (the arguments after `batch` are its own)."""
    out = router(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return sft_loss_from_output(out, batch, *args, **kwargs)


def sft_loss_from_output(
    out: RouterOutput,
    batch: dict[str, torch.Tensor],
    features: Sequence[dict[str, torch.Tensor]],
    routing: RoutingConfig,
    experts: Sequence[PreTrainedModel] | None = None,
    denominators: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3 from a router forward already made over `batch` (mix training shares one forward
    between SFT rows and preference rows). `denominators`: (trained positions, informative
    positions) of the whole micro-batch `batch` is a piece of; None: this batch's own."""
    tokens, informative_total = denominators if denominators is not None else (None, None)
    language = lm_loss(out.logits, batch["labels"], tokens)
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
    route = routing_loss(out.routing_logits[:, :-1], gold, informative, routing.reading, full, targets,
                         denominator=informative_total)
    loss = language + routing.lam * route
    own_tokens, own_informative = float(target_mask.sum()), float(informative.sum())
    return loss, {"lm": float(language.detach()), "route": float(route.detach()), "informative": own_informative,
                  "tokens": own_tokens,
                  # the losses' numerators (summed NLL / routing loss), whatever denominator they used
                  "lm_sum": float(language.detach()) * (tokens if tokens is not None else own_tokens),
                  "route_sum": float(route.detach()) * (informative_total if informative_total is not None
                                                        else own_informative)}


SFT_METRICS = ("lm_loss", "routing_loss", "informative_share")
PREFERENCE_METRICS = ("pref_loss", "rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy")


def record_sft_metrics(metrics: StepMetrics | None, parts: dict[str, float], prefix: str = "") -> None:
    """Eq. 3's parts for the step's log: LM loss per trained token, routing loss per informative
    position, and the share of trained positions that are informative (experts disagree)."""
    if metrics is None:
        return
    metrics.add(f"{prefix}lm_loss", parts["lm_sum"], parts["tokens"])
    metrics.add(f"{prefix}routing_loss", parts["route_sum"], parts["informative"])
    metrics.add(f"{prefix}informative_share", parts["informative"], parts["tokens"])


def record_preference_metrics(metrics: StepMetrics | None, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                              reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, beta: float,
                              bias: torch.Tensor | None, losses: torch.Tensor) -> None:
    """(C)DPO as TRL logs DPO: implicit rewards beta * (log pi - log pi_ref) of chosen and rejected
    answers, their margin and how often chosen > rejected; plus the CDPO bias term and the loss."""
    if metrics is None:
        return
    with torch.no_grad():
        chosen = beta * (policy_chosen.detach().float() - reference_chosen.float())
        rejected = beta * (policy_rejected.detach().float() - reference_rejected.float())
        n = chosen.numel()
        metrics.add("pref_loss", float(losses.detach().float().sum()), n)
        metrics.add("rewards_chosen", float(chosen.sum()), n)
        metrics.add("rewards_rejected", float(rejected.sum()), n)
        metrics.add("rewards_margin", float((chosen - rejected).sum()), n)
        metrics.add("rewards_accuracy", float((chosen > rejected).float().sum()), n)
        if bias is not None and bias.numel():
            metrics.add("cdpo_bias", float(bias.float().sum()), n)


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

    metrics = StepMetrics(SFT_METRICS)

    def loss_of(rows: list[int], live: dict[str, nn.Module], denominators=None) -> torch.Tensor:
        batch = _to(collate([encoded[i] for i in rows], pad_token_id), _device(live["router"]))
        loss, parts = router_sft_loss(live["router"], batch, [features[i] for i in rows], routing, experts,
                                      denominators)
        record_sft_metrics(metrics, parts)
        return loss

    def pieces_loss(micro: list[int], live: dict[str, nn.Module], pieces: list[list[int]]):
        denominators = (sum(trained_positions(encoded[i].labels) for i in micro),
                        sum(_informative(features[i]) for i in micro))
        for piece in pieces:
            yield loss_of(piece, live, denominators)

    def micro_loss(micro: list[int], live: dict[str, nn.Module], pieces: list[list[int]] | None = None):
        if pieces is not None:
            return pieces_loss(micro, live, pieces)
        return loss_of(micro, live)

    result = train_loop({"router": router}, schedule, micro_loss, cfg, "router SFT", checkpoint_dir,
                        rows=lambda i: (len(encoded[i].input_ids),), metrics=metrics)
    router.eval()
    return result


@dataclass
class PreferencePair:
    chosen: Encoded
    rejected: Encoded


def _pair_batch(pairs: Sequence[PreferencePair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one padded batch (one forward for both, as in TRL)."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id)


def _pair_width(pair: PreferencePair) -> int:
    return max(len(pair.chosen.input_ids), len(pair.rejected.input_ids))


def reference_batches(pairs: Sequence[PreferencePair], indices: Sequence[int], batch_size: int,
                      max_tokens: int = 0) -> list[list[int]]:
    """The reference pass's batches over `indices`: consecutive runs of `batch_size` pairs; with
    `max_tokens`, longest pairs first and at most `max_tokens` padded tokens (2 rows per pair x
    the longest row) per batch, a pair over the budget alone."""
    indices = list(indices)
    if not max_tokens:
        return [indices[k : k + batch_size] for k in range(0, len(indices), batch_size)]
    order = sorted(indices, key=lambda j: (-_pair_width(pairs[j]), j))
    batches: list[list[int]] = []
    for j in order:
        if batches and len(batches[-1]) < batch_size and \
                2 * (len(batches[-1]) + 1) * _pair_width(pairs[batches[-1][0]]) <= max_tokens:
            batches[-1].append(j)
        else:
            batches.append([j])
    return batches


@torch.inference_mode()
def preference_reference(
    reference: nn.Module,
    pairs: Sequence[PreferencePair],
    pad_token_id: int,
    beta: float,
    pair_features: Sequence[dict[str, dict[str, torch.Tensor]]] | None = None,
    batch_size: int = 16,
    max_tokens: int = 0,
    indices: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Frozen per-pair terms: reference log-probs of y_w and y_l, and the CDPO expert bias.

    The bias (Eq. 4) needs, at each response position, the log-prob of the gold token under the
    expert that the reference router's routing head selects there; with `pair_features` (each
    expert's gold log-probs, from compute_expert_features) and a RouterModel reference that is a
    lookup. Without features (the fine-tuned baseline's plain DPO) the bias is zero.

    Batches: `batch_size` pairs, and with `max_tokens` at most that many padded tokens (see
    `reference_batches`). `indices`: only these pairs (in this order; one process's share).
    """
    indices = list(range(len(pairs))) if indices is None else list(indices)
    device = _device(reference)
    found: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for group in reference_batches(pairs, indices, batch_size, max_tokens):
        chunk = [pairs[j] for j in group]
        batch = _to(_pair_batch(chunk, pad_token_id), device)
        n = len(chunk)
        out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits, routing_logits = out.logits, getattr(out, "routing_logits", None)
        seq = sequence_logprob(logits, batch["labels"]).float().cpu()
        if pair_features is None:
            bias = torch.zeros(n)
        else:
            if routing_logits is None:
                raise ValueError("the CDPO expert bias needs a RouterModel reference (its routing head picks the expert)")
            _, _, target_mask = shift(logits, batch["labels"])
            target_mask = target_mask.cpu()
            choice = routing_logits[:, :-1].argmax(-1).cpu()
            feats = [pair_features[j]["chosen"] for j in group] + [pair_features[j]["rejected"] for j in group]
            expert_seq = []
            for row, feat in enumerate(feats):
                picked = choice[row][target_mask[row]]
                if len(picked) != len(feat["gold"]):
                    raise ValueError("preference expert features do not line up with the pairs; recompute them")
                expert_seq.append(feat["gold"].gather(1, picked.long().unsqueeze(1)).sum())
            expert_seq = torch.stack(expert_seq)
            bias = cdpo_bias(expert_seq[:n], expert_seq[n:], beta)
        for k, j in enumerate(group):
            found[j] = (seq[k], seq[n + k], bias[k])
        del out, logits, routing_logits
    if not indices:
        return {"ref_chosen": torch.zeros(0), "ref_rejected": torch.zeros(0), "bias": torch.zeros(0)}
    return {name: torch.stack([found[j][k] for j in indices])
            for k, name in enumerate(("ref_chosen", "ref_rejected", "bias"))}


# ----------------------------------------------------------------------------------------------
# The stored reference: computed once, kept next to the output, reused while its inputs hold
# ----------------------------------------------------------------------------------------------

REFERENCE_FORMAT = 1
_SAMPLE = 1 << 20        # bytes hashed at each sampled offset of a large file
_STRIDE = 256 << 20      # a large file is sampled every this many bytes (plus its first and last MiB)


def _file_digest(path: Path) -> str:
    """sha256 of a file up to 64 MiB; of a larger one, its size and 1 MiB samples (start, every
    256 MiB, end): retraining changes every tensor, so a sample of them shows it."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size <= 64 << 20:
            digest.update(handle.read())
        else:
            for offset in [*range(0, size - _SAMPLE, _STRIDE), size - _SAMPLE]:
                handle.seek(offset)
                digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()[:16]


def model_fingerprint(source: Any) -> dict:
    """A local model directory's files (name -> digest); a hub id: the id (and revision) only."""
    path = Path(str(source)) if isinstance(source, (str, os.PathLike)) else None
    if path is None or not path.exists():
        return {"source": str(source)}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {"files": {str(p.relative_to(path)) if p != path else p.name: _file_digest(p) for p in files}}


def _tensor_digest(digest, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def reference_key_parts(pairs: Sequence[PreferencePair], pad_token_id: int, beta: float,
                        pair_features: Sequence[dict] | None, reference: dict) -> dict[str, str]:
    """What the stored reference depends on, each part hashed (so a mismatch can say which)."""
    import numpy as np

    from fusionroute import losses

    tokens = hashlib.sha256(str(len(pairs)).encode())
    for p in pairs:
        for e in (p.chosen, p.rejected):
            tokens.update(np.asarray([len(e.input_ids)], dtype=np.int64).tobytes())
            tokens.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
            tokens.update(np.asarray(e.labels, dtype=np.int64).tobytes())
    features = hashlib.sha256(b"none" if pair_features is None else str(len(pair_features)).encode())
    for pf in pair_features or []:
        for side in ("chosen", "rejected"):
            for name in sorted(pf[side]):
                _tensor_digest(features, pf[side][name])
    code = hashlib.sha256(Path(losses.__file__).read_bytes())
    settings = hashlib.sha256(repr((REFERENCE_FORMAT, float(beta), int(pad_token_id))).encode())
    model = hashlib.sha256(repr(sorted(reference.items(), key=lambda kv: kv[0])).encode())
    return {"reference model": model.hexdigest()[:16], "pairs": tokens.hexdigest()[:16],
            "expert features": features.hexdigest()[:16], "beta and pad id": settings.hexdigest()[:16],
            "loss code": code.hexdigest()[:16]}


def stored_reference(
    path: str | Path,
    load_reference: Callable[[], nn.Module],
    pairs: Sequence[PreferencePair],
    pad_token_id: int,
    beta: float,
    pair_features: Sequence[dict[str, dict[str, torch.Tensor]]] | None = None,
    reference: dict | None = None,
    batch_size: int = 16,
    max_tokens: int = 0,
) -> dict[str, torch.Tensor]:
    """The frozen (C)DPO terms of `pairs` from `path` if it was made from the same inputs, else
    computed (loading the reference with `load_reference`, freeing it before returning) and
    saved there. `reference`: what identifies the reference model (e.g. model_fingerprint of its
    directory plus the dtype). Every process of a launch must call it; see the module docstring."""
    path = Path(path)
    parts = reference_key_parts(pairs, pad_token_id, beta, pair_features, reference or {})
    scaling.wait_for_everyone()  # nobody reads the file while the main process may still write it
    if path.exists():
        saved = torch.load(path, weights_only=False)
        if saved.get("key") == parts:
            if scaling.is_main_process():
                print(f"[reference] reusing {path} ({len(pairs)} pairs): its inputs are unchanged", flush=True)
            return saved["frozen"]
        changed = [k for k in parts if saved.get("key", {}).get(k) != parts[k]]
        if scaling.is_main_process():
            print(f"[reference] {path} was computed from other inputs (changed: {', '.join(changed)}); recomputing",
                  flush=True)
    start, end = scaling.split_evenly(len(pairs))
    if scaling.is_main_process():
        share = f", {end - start} on each of {scaling.num_processes()} processes" if scaling.num_processes() > 1 else ""
        print(f"[reference] computing the reference log-probs of {len(pairs)} pairs once{share}", flush=True)
    model = load_reference()
    mine = preference_reference(model, pairs, pad_token_id, beta, pair_features, batch_size, max_tokens,
                                indices=range(start, end))
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    rows = scaling.gather_lists(list(zip(*(mine[k].tolist() for k in ("ref_chosen", "ref_rejected", "bias")))))
    if scaling.num_processes() == 1:
        frozen = mine  # exactly the tensors of the pass (no round trip through Python floats)
    else:
        frozen = {k: torch.tensor([r[n] for r in rows], dtype=torch.float32)
                  for n, k in enumerate(("ref_chosen", "ref_rejected", "bias"))}
    if scaling.is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"key": parts, "n_pairs": len(pairs), "frozen": frozen}, tmp)
        os.replace(tmp, path)
    scaling.wait_for_everyone()
    return frozen


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
    # Algorithm 1 draws every batch at random from the mixture: SFT samples and pairs share every
    # batch in proportion (grouping the whole pool by length would give batches of one kind only,
    # pairs being longer); length grouping stays within each kind, against padding.
    schedule = list(mixed_batch_indices(
        [len(sft), len(pairs)], cfg.batch_size, cfg.steps, cfg.seed,
        [_lengths(sft), [max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in pairs]]))

    def rows_of(k: int) -> tuple[int, ...]:
        kind, i = pool[k]
        if kind == "sft":
            return (len(sft[i].input_ids),)
        return (len(pairs[i].chosen.input_ids), len(pairs[i].rejected.input_ids))

    metrics = StepMetrics([*(("sft_" + m for m in SFT_METRICS) if is_router else ["sft_lm_loss"]),
                           *PREFERENCE_METRICS, *(["cdpo_bias"] if is_router else [])])

    def rows_loss(rows_idx: list[int], live: dict[str, nn.Module], counts: tuple[int, int, int] | None = None):
        # One forward over SFT rows, chosen rows and rejected rows together: every process then
        # runs exactly one forward per micro-batch (or piece) whatever its mix (DDP/FSDP need
        # that), and the routing head simply takes no part in the preference rows' loss.
        # `counts`: (SFT samples, their trained positions, their informative positions) of the
        # whole micro-batch these rows are a piece of; None: these rows are the micro-batch.
        device = _device(live["policy"])
        sft_ids = [pool[k][1] for k in rows_idx if pool[k][0] == "sft"]
        pref_ids = [pool[k][1] for k in rows_idx if pool[k][0] == "pref"]
        rows = [sft[i] for i in sft_ids] + [pairs[j].chosen for j in pref_ids] + [pairs[j].rejected for j in pref_ids]
        batch = _to(collate(rows, pad_token_id), device)
        out = live["policy"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        n_sft, n = len(sft_ids), len(pref_ids)
        weight_sft = n_sft if counts is None else counts[0]
        denominators = None if counts is None else counts[1:]
        loss = torch.zeros((), device=device)
        if n_sft:
            part = {k: v[:n_sft] for k, v in batch.items()}
            if is_router:
                sft_out = RouterOutput(out.logits[:n_sft], out.routing_logits[:n_sft])
                sft_loss, parts = sft_loss_from_output(sft_out, part, [sft_features[i] for i in sft_ids], routing,
                                                       denominators=denominators)
                record_sft_metrics(metrics, parts, prefix="sft_")
            else:
                sft_loss = lm_loss(out.logits[:n_sft], part["labels"], None if counts is None else counts[1])
                own_tokens = float((part["labels"][:, 1:] != IGNORE).sum())
                metrics.add("sft_lm_loss", float(sft_loss.detach()) * (counts[1] if counts is not None else own_tokens),
                            own_tokens)
            loss = loss + mix.lam * sft_loss * weight_sft
        if n:
            seq = sequence_logprob(out.logits[n_sft:], batch["labels"][n_sft:])
            idx = torch.tensor(pref_ids)
            ref_chosen, ref_rejected = frozen["ref_chosen"][idx].to(device), frozen["ref_rejected"][idx].to(device)
            bias = frozen["bias"][idx].to(device)
            pref_loss = dpo_loss(seq[:n], seq[n:], ref_chosen, ref_rejected, mix.beta, bias)
            record_preference_metrics(metrics, seq[:n], seq[n:], ref_chosen, ref_rejected, mix.beta,
                                      bias if is_router else None, pref_loss)
            loss = loss + pref_loss.sum()
        return loss

    def pieces_loss(micro: list[int], live: dict[str, nn.Module], pieces: list[list[int]]):
        sft_ids = [pool[k][1] for k in micro if pool[k][0] == "sft"]
        counts = (len(sft_ids), sum(trained_positions(sft[i].labels) for i in sft_ids),
                  sum(_informative(sft_features[i]) for i in sft_ids) if is_router else 0)
        for piece in pieces:
            yield rows_loss(piece, live, counts) / len(micro)

    def micro_loss(micro: list[int], live: dict[str, nn.Module], pieces: list[list[int]] | None = None):
        if pieces is not None:
            return pieces_loss(micro, live, pieces)
        return rows_loss(micro, live) / len(micro)

    result = train_loop({"policy": policy}, schedule, micro_loss, cfg, desc, checkpoint_dir, rows=rows_of,
                        metrics=metrics)
    policy.eval()
    return result

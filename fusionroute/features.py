"""Expert features: what the routing loss and CDPO need from the experts, computed once.

For each training sequence and each response position, every expert's log-prob of the gold
next token and its argmax next token. With these stored as a workflow artefact, the router
trains without any expert in memory (the `literal` routing loss needs nothing else), and the
CDPO bias term is a lookup.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fusionroute.io import progress
from transformers import PreTrainedModel

from fusionroute.data import Encoded, collate
from fusionroute.losses import gather_logprobs, shift
from fusionroute.vocab import check_logit_widths, output_rows


@torch.no_grad()
def compute_expert_features(
    experts: Sequence[PreTrainedModel], encoded: Sequence[Encoded], pad_token_id: int, batch_size: int = 16,
    desc: str = "expert features", vocab_size: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Per sequence: {"gold": (R, n_experts) float32, "argmax": (R, n_experts) int32} over its
    R response target positions (labels != IGNORE after the shift), in order. `vocab_size`: the
    shared id range (fusionroute.vocab); larger ids are masked from each expert's distribution."""
    vocab = check_logit_widths({f"expert {i}": output_rows(e) for i, e in enumerate(experts)}, vocab_size)
    device = experts[0].device
    out: list[dict[str, torch.Tensor]] = []
    for start in progress(range(0, len(encoded), batch_size), desc=desc):
        chunk = encoded[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        golds, argmaxes = [], []
        for expert in experts:
            logits = expert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab]
            shifted, targets, mask = shift(logits, batch["labels"])
            golds.append(gather_logprobs(shifted, targets))
            argmaxes.append(shifted.argmax(-1))
        gold = torch.stack(golds, -1).float().cpu()
        argmax = torch.stack(argmaxes, -1).int().cpu()
        mask = mask.cpu()
        for row in range(len(chunk)):
            out.append({"gold": gold[row][mask[row]].clone(), "argmax": argmax[row][mask[row]].clone()})
    return out


def save_features(path: str | Path, features: list[dict[str, torch.Tensor]], meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"meta": meta, "features": features}, tmp)
    tmp.replace(path)


def load_features(path: str | Path) -> tuple[list[dict[str, torch.Tensor]], dict]:
    blob = torch.load(path, weights_only=True)
    return blob["features"], blob["meta"]


def scatter_to_positions(
    values: Sequence[torch.Tensor], target_mask: torch.Tensor, fill: float = 0.0
) -> torch.Tensor:
    """Place per-sequence (R_i, n) rows back at the response positions of a (B, T-1) batch."""
    batch, width = target_mask.shape
    n = values[0].shape[-1]
    out = torch.full((batch, width, n), fill, dtype=values[0].dtype)
    for row, value in enumerate(values):
        positions = target_mask[row].nonzero().squeeze(-1)
        if len(positions) != len(value):
            raise ValueError(
                f"expert features do not line up with the batch (row {row}: {len(value)} stored vs "
                f"{len(positions)} response positions); recompute them with the same tokenizer and max_len"
            )
        out[row, positions] = value
    return out

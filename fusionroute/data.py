"""Turning instruction/response records into token tensors for training.

One tokenisation path serves every trainer (experts, router SFT, CDPO, the fine-tuned baseline,
the reward model), so a response token is the same token everywhere: the expert features
computed for a sample line up position for position with the router's labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100


def render_prompt(template: str, instruction: str) -> str:
    """Wrap an instruction in the world's prompt template (alpaca style by default)."""
    if "{instruction}" not in template:
        raise ValueError("prompt_template must contain '{instruction}'")
    return template.replace("{instruction}", instruction)


def fit_instruction(tokenizer, template: str, instruction: str, max_prompt_tokens: int) -> tuple[str, bool]:
    """The instruction, shortened so that its rendered prompt (BOS + template) has at most
    `max_prompt_tokens` tokens: the middle is cut (the head states the task, the tail often holds the
    question), marked by " [...] ". Returns (instruction, whether it was cut)."""
    def length(text: str) -> int:
        bos = 1 if tokenizer.bos_token_id is not None else 0
        return bos + len(tokenizer(render_prompt(template, text), add_special_tokens=False)["input_ids"])

    if length(instruction) <= max_prompt_tokens:
        return instruction, False
    ids = tokenizer(instruction, add_special_tokens=False)["input_ids"]
    budget = max_prompt_tokens - (length("") + 8)  # 8: room for the marker and re-tokenisation at the seams
    while budget > 0:
        head, tail = ids[: budget - budget // 2], ids[len(ids) - budget // 2 :] if budget // 2 else []
        text = tokenizer.decode(head) + " [...] " + tokenizer.decode(tail)
        if length(text) <= max_prompt_tokens:
            return text, True
        budget -= 8
    raise ValueError(f"generation.max_prompt_tokens = {max_prompt_tokens} leaves no room for an instruction: "
                     f"the prompt template alone is {length('')} tokens")


@dataclass
class Encoded:
    """One prompt+response sequence; `labels` is IGNORE on prompt tokens."""

    input_ids: list[int]
    labels: list[int]


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_len: int, add_eos: bool = True
) -> Encoded:
    """Tokenise prompt and response separately (so the boundary is exact) and truncate the response."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if add_eos:
        response_ids = response_ids + [tokenizer.eos_token_id]
    room = max_len - len(prompt_ids)
    if room < 1:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room within max_len={max_len}")
    response_ids = response_ids[:room]
    return Encoded(prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_len: int) -> Encoded:
    """A plain-text (pretraining) sequence: every token after the first is a target."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    ids = (ids + [tokenizer.eos_token_id])[:max_len]
    return Encoded(ids, list(ids))


def collate(batch: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are IGNORE on padding."""
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, enc in enumerate(batch):
        n = len(enc.input_ids)
        input_ids[row, :n] = torch.tensor(enc.input_ids)
        labels[row, :n] = torch.tensor(enc.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def batch_indices(
    n: int, batch_size: int, steps: int, seed: int, lengths: Sequence[int] | None = None, group: int = 32
) -> Iterator[list[int]]:
    """`steps` batches of indices: seeded shuffled epochs, reshuffled each pass, never partial.

    With `lengths`, each run of `group` consecutive batches of an epoch is sorted by length
    before being cut, so a batch holds sequences of similar length and padding (pure wasted
    compute on a CPU) mostly disappears; the order of those batches is shuffled again.
    """
    if n == 0:
        raise ValueError("cannot draw batches from an empty dataset")
    generator = torch.Generator().manual_seed(seed)
    pending: list[list[int]] = []
    order: list[int] = []
    produced = 0
    while produced < steps:
        if not pending:
            while len(order) < batch_size * group:
                order.extend(torch.randperm(n, generator=generator).tolist())
            window, order = order[: batch_size * group], order[batch_size * group :]
            if lengths is not None:
                window.sort(key=lambda i: lengths[i])
            pending = [window[k : k + batch_size] for k in range(0, len(window), batch_size)]
            if lengths is not None:
                perm = torch.randperm(len(pending), generator=generator).tolist()
                pending = [pending[k] for k in perm]
        yield pending.pop(0)
        produced += 1


def mixed_batch_indices(
    sizes: Sequence[int], batch_size: int, steps: int, seed: int, lengths: Sequence[Sequence[int]], group: int = 32
) -> Iterator[list[int]]:
    """`steps` batches over several kinds of samples (mix training: SFT samples and preference
    pairs), each batch holding every kind in proportion to its size, drawn at random within each
    kind (Algorithm 1 mixes at random). Indices run over the kinds in order (kind 0's first).

    Length grouping stays within each kind: each kind's window of `group` batches is sorted by
    length and its k-th shortest slice joins the other kinds' k-th shortest slices, so a batch's
    rows are of similar length (padding is wasted compute) whatever the kinds' lengths; the order
    of the batches is shuffled again.
    """
    kinds = [k for k, n in enumerate(sizes) if n]
    if not kinds:
        raise ValueError("cannot draw batches from an empty dataset")
    total = sum(sizes)
    share = {k: max(1, round(batch_size * sizes[k] / total)) for k in kinds}
    while sum(share.values()) > batch_size:  # rounding up every kind can overshoot a small batch
        share[max(share, key=share.get)] -= 1
    share[kinds[0]] += batch_size - sum(share.values())
    offset = {k: sum(sizes[:k]) for k in kinds}
    generator = torch.Generator().manual_seed(seed)
    order: dict[int, list[int]] = {k: [] for k in kinds}
    pending: list[list[int]] = []
    produced = 0
    while produced < steps:
        if not pending:
            slices = []
            for k in kinds:
                need = share[k] * group
                while len(order[k]) < need:
                    order[k].extend(torch.randperm(sizes[k], generator=generator).tolist())
                window, order[k] = order[k][:need], order[k][need:]
                window.sort(key=lambda i, k=k: lengths[k][i])
                slices.append([[offset[k] + i for i in window[j * share[k] : (j + 1) * share[k]]] for j in range(group)])
            batches = [sum((slices[m][j] for m in range(len(kinds))), []) for j in range(group)]
            perm = torch.randperm(group, generator=generator).tolist()
            pending = [batches[j] for j in perm]
        yield pending.pop(0)
        produced += 1


def pack_texts(encoded: Sequence[Encoded], block: int) -> list[Encoded]:
    """Concatenate pretraining sequences and cut them into full `block`-token pieces (no padding)."""
    stream = [t for enc in encoded for t in enc.input_ids]
    return [Encoded(stream[k : k + block], stream[k : k + block]) for k in range(0, len(stream) - block + 1, block)]

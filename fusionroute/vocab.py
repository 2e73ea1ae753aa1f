"""The shared-vocabulary policy of token-level collaboration, and the end-of-turn ids.

Eq. 1 adds the router's and an expert's log-prob vectors index by index, so every model must
mean the same token by the same id. Real checkpoints of one family do not always have identical
vocabularies: a fine-tuning recipe often appends a pad token (vocabulary V+1), and some models pad
their output layer to a multiple of 64 rows. The policy:

- The **shared range** is ids ``[0, size)`` with ``size`` the smallest of every tokenizer's length
  and every model's output-layer rows.
- Inside the shared range the vocabularies must map **token for token**; a single differing id
  is refused with an error naming the model, the id and both tokens (summing unrelated tokens
  would silently corrupt every score).
- Ids outside the shared range (appended tokens, padding rows) are **masked from every model's
  distribution**: decoders and expert features read only ``logits[..., :size]``, so the softmax
  renormalises over the shared tokens and no model can emit an id another cannot read.
- End-of-turn ids are a generation setting, not a vocabulary property: an eos that differs between
  models (``<|end_of_text|>`` in a base, ``<|eot_id|>`` in an instruct model) is not an error.
  Generation stops on the union of every model's end ids that lie in the shared range.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase


class VocabularyMismatch(ValueError):
    """Models that cannot share one vocabulary (a differing id inside the shared range)."""


@dataclass(frozen=True)
class SharedVocabulary:
    size: int  # ids [0, size) are shared token for token; larger ids are masked everywhere
    stop_ids: tuple[int, ...]  # end-of-turn ids (sorted), all < size
    masked: Mapping[str, int]  # per model: how many of its ids lie outside the shared range

    def describe(self) -> str:
        extra = ", ".join(f"{name}: {n}" for name, n in self.masked.items() if n)
        return f"shared vocabulary of {self.size} ids, stop ids {list(self.stop_ids)}" + (
            f"; masked ids outside it ({extra})" if extra else "")


def as_id_list(value: int | Iterable[int] | None) -> list[int]:
    """An eos setting (None, one id, or a list as in Llama-3.1's generation_config) as a list."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def end_token_ids(model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase | None) -> list[int]:
    """Every id that ends a response for this model: its generation_config's eos ids (several for
    Llama-3.1-Instruct: end_of_text, eom, eot), its config's and its tokenizer's eos."""
    ids: list[int] = []
    if model is not None:
        generation = getattr(model, "generation_config", None)
        ids += as_id_list(getattr(generation, "eos_token_id", None))
        ids += as_id_list(getattr(model.config, "eos_token_id", None))
    if tokenizer is not None:
        ids += as_id_list(tokenizer.eos_token_id)
    return sorted(set(ids))


def output_rows(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def _tokens(tokenizer: PreTrainedTokenizerBase, n: int) -> list[str | None]:
    return tokenizer.convert_ids_to_tokens(list(range(n)))


def shared_vocabulary(
    reference: PreTrainedTokenizerBase,
    tokenizers: Mapping[str, PreTrainedTokenizerBase | None],
    models: Mapping[str, PreTrainedModel],
) -> SharedVocabulary:
    """Apply the policy of the module docstring to the world's tokenizer (`reference`), each model's
    own tokenizer (None: the model ships none and uses the reference) and each model."""
    sizes = {"tokenizer": len(reference)}
    sizes.update({f"{name} (tokenizer)": len(tok) for name, tok in tokenizers.items() if tok is not None})
    sizes.update({f"{name} (output layer)": output_rows(m) for name, m in models.items()})
    size = min(sizes.values())
    ref_tokens = _tokens(reference, size)
    problems = []
    for name, tok in tokenizers.items():
        if tok is None or tok is reference:
            continue
        other = _tokens(tok, size)
        differing = [i for i in range(size) if other[i] != ref_tokens[i]]
        if differing:
            shown = ", ".join(f"id {i}: {other[i]!r} vs {ref_tokens[i]!r}" for i in differing[:5])
            problems.append(f"{name!r}: {len(differing)} of the {size} shared ids map to other tokens ({shown})")
    if problems:
        raise VocabularyMismatch("models must share one vocabulary token for token; " + " | ".join(problems))
    stops: set[int] = set(as_id_list(reference.eos_token_id))
    for name, model in models.items():
        stops.update(end_token_ids(model, tokenizers.get(name) or reference))
    masked = {name: output_rows(m) - size for name, m in models.items()}
    return SharedVocabulary(size=size, stop_ids=tuple(sorted(i for i in stops if i < size)), masked=masked)


def check_logit_widths(widths: Mapping[str, int], vocab_size: int | None) -> int:
    """The width decoders slice logits to: `vocab_size` when given (every model must have at least
    that many rows), else all widths must be equal (callers that did not apply the policy)."""
    if vocab_size is None:
        if len(set(widths.values())) > 1:
            detail = ", ".join(f"{n}={w}" for n, w in widths.items())
            raise VocabularyMismatch(f"models must share one vocabulary, but their output sizes differ ({detail})")
        return next(iter(widths.values()))
    short = {n: w for n, w in widths.items() if w < vocab_size}
    if short:
        raise VocabularyMismatch(f"output layers smaller than the shared vocabulary of {vocab_size}: {short}")
    return vocab_size


def stop_set(eos: int | Sequence[int] | None) -> frozenset[int]:
    return frozenset(as_id_list(eos))

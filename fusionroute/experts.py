"""The expert pool: n causal LMs that must share the router's tokenizer and vocabulary.

Token-level collaboration adds log-prob vectors index by index, so a single differing token id
would silently mix unrelated tokens. The pool refuses such experts and says what differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fusionroute.models import ModelSource, load_causal_lm, load_tokenizer


def vocabulary_differences(reference: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase, limit: int = 5) -> list[str]:
    """Human-readable differences between two tokenizers' vocabularies and special tokens."""
    problems: list[str] = []
    if len(reference) != len(other):
        problems.append(f"vocabulary size {len(other)} vs {len(reference)}")
    ref_vocab, other_vocab = reference.get_vocab(), other.get_vocab()
    differing = [tok for tok, idx in ref_vocab.items() if other_vocab.get(tok) != idx]
    if differing:
        shown = ", ".join(f"{tok!r} ({ref_vocab[tok]} vs {other_vocab.get(tok)})" for tok in sorted(differing)[:limit])
        problems.append(f"{len(differing)} tokens map to different ids, e.g. {shown}")
    for attr in ("eos_token_id", "bos_token_id"):
        if getattr(reference, attr) != getattr(other, attr):
            problems.append(f"{attr} {getattr(other, attr)} vs {getattr(reference, attr)}")
    return problems


def check_compatible(
    names: Sequence[str], tokenizers: Sequence[PreTrainedTokenizerBase], models: Sequence[PreTrainedModel],
    reference: PreTrainedTokenizerBase,
) -> None:
    """Raise ValueError naming every expert whose tokenizer or output vocabulary differs."""
    errors = []
    for name, tok, model in zip(names, tokenizers, models):
        problems = vocabulary_differences(reference, tok)
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < len(reference):
            problems.append(f"output layer has {rows} rows for a {len(reference)}-token vocabulary")
        if problems:
            errors.append(f"expert {name!r}: " + "; ".join(problems))
    if errors:
        raise ValueError("experts must share the router's tokenizer; " + " | ".join(errors))


@dataclass
class ExpertPool:
    names: list[str]
    models: list[PreTrainedModel]
    tokenizer: PreTrainedTokenizerBase

    @classmethod
    def load(
        cls, names: Sequence[str], sources: Sequence[str | dict], tokenizer: str | dict, dtype: str = "float32",
        device: str = "cpu",
    ) -> "ExpertPool":
        if len(names) != len(sources):
            raise ValueError(f"{len(names)} expert names for {len(sources)} expert sources")
        reference = load_tokenizer(tokenizer)
        models = [load_causal_lm(s, dtype, device) for s in sources]
        tokenizers = [load_tokenizer(s) if _has_tokenizer(s) else reference for s in sources]
        check_compatible(names, tokenizers, models, reference)
        return cls(list(names), models, reference)


def _has_tokenizer(source: str | dict) -> bool:
    """Hub ids always ship one; a local directory may hold only weights (then the world's is used)."""
    from pathlib import Path

    parsed = ModelSource.parse(source)
    if parsed.package:
        return True
    path = Path(str(parsed.path))
    if not path.exists():
        return True
    return any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))

"""The expert pool: n causal LMs that must share the router's tokenizer and vocabulary.

Token-level collaboration adds log-prob vectors index by index, so a single differing token id
would silently mix unrelated tokens. The pool applies the shared-vocabulary policy of
`fusionroute.vocab` (refusing experts whose shared ids differ, masking appended ids) and keeps
the shared range and the end-of-turn ids that every decoder of the pool uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fusionroute.models import ModelSource, load_causal_lm, load_tokenizer
from fusionroute.vocab import SharedVocabulary, shared_vocabulary


@dataclass
class ExpertPool:
    names: list[str]
    models: list[PreTrainedModel]
    tokenizer: PreTrainedTokenizerBase
    vocab: SharedVocabulary

    @classmethod
    def load(
        cls, names: Sequence[str], sources: Sequence[str | dict], tokenizer: str | dict, dtype: str = "float32",
        device: str = "cpu", extra_models: dict[str, PreTrainedModel] | None = None,
    ) -> "ExpertPool":
        """Load the experts; `extra_models` (e.g. the router's LM) join the vocabulary check."""
        if len(names) != len(sources):
            raise ValueError(f"{len(names)} expert names for {len(sources)} expert sources")
        reference = load_tokenizer(tokenizer)
        models = [load_causal_lm(s, dtype, device) for s in sources]
        tokenizers = {n: load_tokenizer(s) if _has_tokenizer(s) else None for n, s in zip(names, sources)}
        all_models = {**dict(zip(names, models)), **(extra_models or {})}
        vocab = shared_vocabulary(reference, tokenizers, all_models)
        return cls(list(names), models, reference, vocab)


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

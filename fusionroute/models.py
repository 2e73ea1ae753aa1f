"""Loading models and tokenizers from wherever a config points: a local directory, a hub id, or
a GGUF file shipped inside a Python package.

The hub path is what paper users run; it is the same `from_pretrained` call as the local one, so
tests exercise it by passing a directory where a hub id would go.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: `path` (directory or hub id), or a GGUF `file` in `package`."""

    path: str | None = None
    package: str | None = None
    file: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str | dict | "ModelSource") -> "ModelSource":
        if isinstance(spec, ModelSource):
            return spec
        if isinstance(spec, str):
            return cls(path=spec)
        if isinstance(spec, dict):
            unknown = set(spec) - {"path", "package", "file", "revision"}
            if unknown:
                raise ValueError(f"unknown model source keys {sorted(unknown)}")
            source = cls(**spec)
            if bool(source.path) == bool(source.package):
                raise ValueError(f"a model source needs exactly one of 'path' or 'package': {spec}")
            if source.package and not source.file:
                raise ValueError(f"a package model source needs 'file' (the GGUF file name): {spec}")
            return source
        raise TypeError(f"cannot read a model source from {spec!r}")

    def resolve(self) -> tuple[str, dict[str, Any]]:
        """(`pretrained_model_name_or_path`, extra from_pretrained kwargs)."""
        if self.package:
            found = importlib.util.find_spec(self.package)
            if found is None or not found.submodule_search_locations:
                raise FileNotFoundError(f"package {self.package!r} (holding {self.file}) is not installed")
            directory = Path(list(found.submodule_search_locations)[0])
            matches = sorted(directory.rglob(self.file))
            if not matches:
                raise FileNotFoundError(f"{self.file} not found inside package {self.package} at {directory}")
            return str(matches[0].parent), {"gguf_file": matches[0].name}
        kwargs = {"revision": self.revision} if self.revision else {}
        return str(self.path), kwargs


def load_tokenizer(spec: str | dict | ModelSource) -> PreTrainedTokenizerBase:
    name, kwargs = ModelSource.parse(spec).resolve()
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if tokenizer.pad_token_id is None:
        # Llama-3 and friends ship without a pad token; padding is always masked, so EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    spec: str | dict | ModelSource, dtype: str = "float32", device: str = "cpu", **kwargs: Any
) -> PreTrainedModel:
    name, extra = ModelSource.parse(spec).resolve()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if device == "auto":
        kwargs.setdefault("device_map", "auto")
    model = AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES[dtype], **extra, **kwargs)
    if device != "auto":
        model.to(device)
    model.eval()
    return model


def pick_device(requested: str = "auto") -> str:
    """'auto' -> cuda when present, else cpu."""
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"

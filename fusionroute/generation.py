"""One generator interface for every method, and the resumable loop that drives it.

FusionRoute, its ablation, the experts, the merges and the collaboration baselines all take
prompts and return `Completion`s, so the generate rule treats them alike and a new method only
registers a builder here (see README "Adding a method").
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence


from fusionroute.io import ResumableJsonl, progress, settings_hash


@dataclass
class Completion:
    text: str  # decoded response, special tokens dropped, cut at EOS
    token_ids: list[int]  # emitted tokens (EOS excluded)
    expert_ids: list[int] | None = None  # per emitted token, for routed methods
    forwards: int | None = None  # model forward passes spent on this sample
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific metadata


class Generator(Protocol):
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[Completion]: ...


@dataclass
class MethodContext:
    """What a builder gets: resolved artefact paths and hyperparameters of one method."""

    kind: str
    inputs: dict[str, Any]  # e.g. {"model": dir} or {"router": dir, "experts": [dirs]}
    params: dict[str, Any]  # method hyperparameters from the config
    tokenizer: str  # tokenizer source (directory or hub id)
    dtype: str = "float32"
    device: str = "cpu"
    prompt_template: str | None = None  # the world's template the prompts were rendered with


Builder = Callable[[MethodContext], Generator]
_BUILDERS: dict[str, Builder] = {}


def register_method(kind: str) -> Callable[[Builder], Builder]:
    """Decorator: make a generator builder available to configs as `kind: <kind>`."""

    def wrap(builder: Builder) -> Builder:
        if kind in _BUILDERS:
            raise ValueError(f"method kind {kind!r} is registered twice")
        _BUILDERS[kind] = builder
        return builder

    return wrap


def method_kinds() -> list[str]:
    _import_builtin_methods()
    return sorted(_BUILDERS)


def build_generator(ctx: MethodContext) -> Generator:
    _import_builtin_methods()
    if ctx.kind not in _BUILDERS:
        raise KeyError(f"unknown method kind {ctx.kind!r}; registered: {sorted(_BUILDERS)}")
    return _BUILDERS[ctx.kind](ctx)


def _import_builtin_methods() -> None:
    """Import the modules the method catalogue names for its kinds: importing registers their
    builders (by name, not by import statement: the builders import this module)."""
    import importlib

    from fusionroute.catalog import load_catalog

    for module in sorted(set(load_catalog()["kinds"].values())):
        importlib.import_module(module)


def run_generation(
    generator: Generator,
    samples: Sequence[dict],
    out_path: str | os.PathLike,
    batch_size: int,
    max_new_tokens: int,
    settings: dict[str, Any],
    desc: str = "generate",
    resume_key: dict[str, Any] | None = None,
) -> list[dict]:
    """Generate a completion per sample ({"id", "prompt"}) into `out_path` (generations.jsonl).

    Finished samples are appended to a partial file as they complete; a rerun after a crash with
    the same `resume_key` (default: `settings`) skips them, any other starts over. The workflow's
    key holds the settings and a fingerprint of every model's files, so samples decoded by a
    router that was retrained since are never mixed with the new one's. Prompts are batched by
    length to limit padding.
    """
    sink = ResumableJsonl(out_path, settings_hash(resume_key if resume_key is not None else settings))
    ids = [str(s["id"]) for s in samples]
    pending = set(sink.pending(ids))
    todo = sorted((s for s in samples if str(s["id"]) in pending), key=lambda s: len(s["prompt"]))
    bar = progress(total=len(samples), initial=len(samples) - len(todo), desc=desc)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        outputs = generator.generate([s["prompt"] for s in chunk], max_new_tokens)
        for sample, out in zip(chunk, outputs):
            row = {"id": str(sample["id"]), "prompt": sample["prompt"], "completion": out.text,
                   "n_tokens": len(out.token_ids)}
            if out.expert_ids is not None:
                row["expert_ids"] = out.expert_ids
            if out.forwards is not None:
                row["forwards"] = out.forwards
            row.update(out.extra)
            sink.add(row)
        bar.update(len(chunk))
    bar.close()
    return sink.finish(ids)

"""The benchmarks: one module per benchmark in this package, each defining one `Benchmark`
(base.py) that carries everything about it -- name, table label, domain, hub data spec, the
instruction text a model sees for a record, its scorer, for code benchmarks its program builder,
and its tiny-world generator. docs/CONTRACTS.md is the source of truth for schemas and texts.

`BENCHMARKS` (name -> Benchmark, in `order`: gsm8k, math500, mbpp, humaneval, ifeval) is found
by importing every module of this package once, on first use; every other place (scoring, code,
tables, compare, claims, the tiny world, the workflow's steps) takes its list, labels and
dispatch from it. Adding a benchmark = one new module here that calls `register`, plus its
`benchmarks:` entry in the config.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any

from fusionroute.eval.benchmarks.base import (
    DOMAINS, Benchmark, DataError, Pairs, ProgramBuilder, Scored, Scorer, TinyGenerator, register,
    unregister)
from fusionroute.eval.benchmarks.base import REGISTRY as _REGISTRY
from fusionroute.eval.benchmarks.loading import _read_jsonl, read_records, subset

__all__ = ["BENCHMARKS", "DOMAINS", "Benchmark", "DataError", "Pairs", "ProgramBuilder", "Scored",
           "Scorer", "TinyGenerator", "benchmark_names", "get_benchmark", "get_spec",
           "instruction_for", "load_records", "register", "registry", "subset", "unregister",
           "_read_jsonl"]

_discovered = False


def registry() -> dict[str, Benchmark]:
    """name -> Benchmark in `order`; the benchmark modules are imported on the first call (not
    at package import: modules they import, such as fusionroute.eval.code, import base.py, and
    must not find a half-imported registry)."""
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")  # each registers its benchmark
        _discovered = True
    return _REGISTRY


def __getattr__(name: str) -> Any:
    # `BENCHMARKS` is the registry itself (one dict, updated in place), discovered on first use.
    if name == "BENCHMARKS":
        return registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def benchmark_names() -> tuple[str, ...]:
    return tuple(registry())


def get_benchmark(name: str) -> Benchmark:
    try:
        return registry()[name]
    except KeyError:
        raise DataError(f"unknown benchmark {name!r}; choose one of {sorted(registry())}") from None


get_spec = get_benchmark  # its former name


def load_records(name: str, data_path: str | os.PathLike | None = None, hub_id: str | None = None,
                 n: int | None = None, seed: int = 0) -> list[dict]:
    """Records of benchmark `name` with an added "id"; a seeded subset of `n` if given.

    n=None keeps every record; pass `BENCHMARKS[name].paper_n` for the paper's subset sizes
    (GSM8K 400, MATH500 500, MBPP 500, HumanEval 164, IFEval 400). GSM8K ids are row indices
    of the full split, so they are stable under subsetting.
    """
    return read_records(get_benchmark(name), None if data_path is None else str(data_path), hub_id, n, seed)


def instruction_for(name: str, record: dict) -> str:
    """The instruction text for a record, exactly as docs/CONTRACTS.md specifies."""
    return get_benchmark(name).instruction(record)

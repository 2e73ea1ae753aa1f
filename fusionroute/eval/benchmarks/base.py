"""The `Benchmark` object and the registry every benchmark module adds itself to.

One module per benchmark (gsm8k.py, math500.py, ...) builds one `Benchmark` and calls
`register` on it; fusionroute.eval.benchmarks finds those modules by scanning the package, so
adding a benchmark is one new module (plus its `benchmarks:` entry in the config).

Kept free of heavy imports and of the benchmark modules themselves: the scorers' libraries
(math_verify, if_verifiable, the sandbox) and the tiny-world generators are imported by the
benchmark modules' functions when called, so reading the registry stays cheap (the scoring CLI
and the tables import it).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

# The experts' domains, in routing-head order; every benchmark measures one of them.
DOMAINS: tuple[str, ...] = ("math", "code", "instruct")


class DataError(ValueError):
    """Benchmark data that is missing or not in the expected schema."""


# ----------------------------------------------------------------------------------------------
# What a scorer gets and returns (fusionroute.eval.scoring wraps it into scores.json)
# ----------------------------------------------------------------------------------------------
Pairs = list[tuple[dict, dict]]  # (generation {"id", "completion", ...}, record), matched by id


@dataclass
class Scored:
    samples: list[dict]                                      # each with "id" and "correct"
    metrics: dict[str, float] = field(default_factory=dict)  # besides the primary metric
    info: dict[str, Any] = field(default_factory=dict)       # extra top-level scores.json keys


class Scorer(Protocol):
    def __call__(self, pairs: Pairs, **opts: Any) -> Scored: ...


ProgramBuilder = Callable[[dict, str], str]  # (record, completion) -> a program that runs its tests


@dataclass(frozen=True)
class TinyGenerator:
    """How the tiny world draws this benchmark's held-out items (fusionroute.tiny.tasks):
    `sample(rng, level)` -> a problem (from fusionroute.tiny.{math,code,instruct}_tasks),
    `record(problem, i)` -> the i-th record (0-based) in the real dataset's schema, and
    `accept(problem)` -> whether to keep a drawn problem (None: keep all)."""
    sample: Callable[[random.Random, int], Any]
    record: Callable[[Any, int], dict]
    accept: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class Benchmark:
    """Everything about one benchmark (docs/CONTRACTS.md is the source of truth for the data
    schemas and instruction texts)."""
    name: str                       # the config key and results folder name
    label: str                      # column heading in the tables
    domain: str                     # one of DOMAINS: the expert whose skill it measures
    order: int                      # position among the benchmarks (tables, loops): ascending
    # where the data comes from: datasets.load_dataset(hub_id, hub_config, split=split)
    hub_id: str
    hub_config: str | None
    split: str
    id_field: str | None            # None: the row index in the full split is the id (GSM8K)
    required_fields: tuple[str, ...]
    primary_metric: str
    paper_n: int                    # subset size used in the paper's Table 3
    instruction: Callable[[dict], str]  # the instruction text a model sees for a record
    scorer: Scorer
    build_program: ProgramBuilder | None = None   # code benchmarks: completion + tests -> program
    # a copy shipped with an installed package (HumanEval): used offline instead of the hub
    packaged_data: Callable[[], Path] | None = None
    # the tiny world's generator, looked up when first needed: the generator modules take
    # ~0.3 s to import, which scoring and the tables should not pay
    tiny: Callable[[], TinyGenerator] | None = None

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"benchmark {self.name!r}: domain {self.domain!r} is not one of {DOMAINS}")

    def instruction_for(self, record: dict) -> str:
        return self.instruction(record)


# ----------------------------------------------------------------------------------------------
# The registry: name -> Benchmark, kept sorted by `order`
# ----------------------------------------------------------------------------------------------
# One dict, updated in place, so that a consumer holding it sees every registration.
REGISTRY: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add `benchmark` (a benchmark module's one object) and keep the registry in `order`."""
    if REGISTRY.get(benchmark.name, benchmark) is not benchmark:
        raise ValueError(f"a second benchmark named {benchmark.name!r}")
    clash = [b.name for b in REGISTRY.values() if b.order == benchmark.order and b.name != benchmark.name]
    if clash:
        raise ValueError(f"benchmark {benchmark.name!r}: order {benchmark.order} is taken by {clash[0]!r}")
    ordered = sorted([*(b for b in REGISTRY.values() if b.name != benchmark.name), benchmark],
                     key=lambda b: b.order)
    REGISTRY.clear()
    REGISTRY.update((b.name, b) for b in ordered)
    return benchmark


def unregister(name: str) -> None:
    """Remove a benchmark (tests register throwaway ones)."""
    REGISTRY.pop(name)

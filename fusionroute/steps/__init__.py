"""The workflow steps' registry: rule name -> step function, and the one way to run a step.

The step functions live in this package, one module per rule file of workflow/rules/ (STEP_MODULES:
fusionroute/steps/tiny.py for tiny.smk, train.py for train.smk, ...; common.py holds their shared
helpers). Each step takes its rule's named inputs, outputs and params (dicts of paths and values),
so a rule is a one-line call (workflow/scripts/step.py dispatches on the rule name) and a test can
run a step without Snakemake; steps are the only code that reads `params` dicts, and heavy imports
stay inside them. A step module decorates its functions with `@step`; `run_step` imports the step
modules by name, so imports go one way: steps import the library, the library (including the
accelerate relaunch in `fusionroute.scaling` and the warm server) only ever imports this registry.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

Step = Callable[[dict[str, Any], dict[str, Any], dict[str, Any], int], None]
STEPS: dict[str, Step] = {}
# The modules whose import registers steps: one per rule file of workflow/rules/ that runs steps
# (theory.smk and plan.smk call their modules directly). tests/test_imports.py checks the list.
STEP_MODULES = tuple(f"fusionroute.steps.{area}" for area in
                     ("tiny", "train", "baselines", "evaluate", "report", "claims", "hub", "judge"))


def step(fn: Step) -> Step:
    if fn.__name__ in STEPS and STEPS[fn.__name__] is not fn:
        raise ValueError(f"workflow step {fn.__name__!r} is defined twice")
    STEPS[fn.__name__] = fn
    return fn


def load_steps() -> dict[str, Step]:
    for module in STEP_MODULES:
        importlib.import_module(module)
    return STEPS


VARIANT_SUFFIX = "_variant"   # workflow/rules/train.smk: a sweep's copy of a rule runs the rule's step


def run_step(name: str, inputs: dict, outputs: dict, params: dict, threads: int = 1) -> None:
    steps = load_steps()
    name = name.removesuffix(VARIANT_SUFFIX)
    if name not in steps:
        raise KeyError(f"no workflow step named {name!r}; known: {sorted(steps)}")
    if params.get("scaling"):
        from fusionroute.scaling import maybe_relaunch

        if maybe_relaunch(name, inputs, outputs, params, threads):
            return
    limit_threads(threads)
    steps[name](inputs, outputs, params, threads)


def limit_threads(threads: int) -> None:
    """Honour the scheduler's core allowance without importing torch in light (scoring) steps:
    the environment variables bind a torch imported later, set_num_threads one already loaded."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(max(1, threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, threads))

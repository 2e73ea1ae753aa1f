"""Workflow step of workflow/rules/hub.smk: the hub worlds' training data (fusionroute.hub_data)."""
from __future__ import annotations

import json

from fusionroute.hub_data import build_training_data
from fusionroute.steps import step


@step
def hub_data(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    stats = build_training_data(params["sft"], params["preferences"], params["seed"], outputs["sft_mix"],
                                outputs["holdout"], outputs["preferences"], outputs.get("stats"),
                                outputs.get("mix_sft"))
    print(json.dumps(stats, indent=2))

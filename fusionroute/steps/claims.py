"""Workflow steps of workflow/rules/claims.smk: the tables beside the paper's numbers, and the
paper's claims tested (fusionroute.eval.claims)."""
from __future__ import annotations

from fusionroute.steps import step


@step
def side_by_side(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Table 1 / Table 2 beside the paper's numbers ("ours | paper" per cell)."""
    from fusionroute.eval.claims import write_side_by_side

    write_side_by_side(params["rows"], inputs["paper"], params["table"], outputs["tex"], outputs["md"],
                       params["caption"], params["label"])


@step
def claims(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """The paper's claims tested on our scores and judge verdicts (claims.md, claims.json)."""
    from fusionroute.eval.claims import write_claims

    write_claims(params["families"], inputs["paper"], outputs["md"], outputs["json"], params["table1"],
                 world=params["world"], seed=params["seed"], alpha=params["alpha"], power=params["power"],
                 resamples=params["resamples"])

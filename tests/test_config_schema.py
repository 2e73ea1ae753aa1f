"""The config schema refuses what a job would only refuse at run time (checked by the Snakefile's
`validate`, before any job)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def validate(cfg: dict) -> None:
    from snakemake.utils import validate as snakemake_validate

    snakemake_validate(copy.deepcopy(cfg), SCHEMA)  # what the Snakefile calls


@pytest.fixture(scope="module")
def tiny() -> dict:
    return yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def with_reading(cfg: dict, block: str, phase: str, reading: str) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg[block][phase]["reading"] = reading
    return cfg


def test_mix_reading_mixture_is_refused_before_any_job(tiny):
    """The mix step never loads the experts that the 'mixture' routing loss needs (it would
    raise in the first SFT micro-batch, after the reference pass): the schema refuses it."""
    from snakemake.exceptions import WorkflowError

    validate(tiny)
    validate(with_reading(tiny, "fusionroute", "mix", "literal"))
    for block in ("fusionroute", "finetuned"):
        with pytest.raises(WorkflowError, match="mixture") as err:
            validate(with_reading(tiny, block, "mix", "mixture"))
        message = str(err.value)
        assert f"['{block}']['mix']['reading']" in message
        assert "never loads" in message and "'description':" in message  # it says why
    # The router's SFT phase loads the experts for it: there 'mixture' stays allowed.
    validate(with_reading(tiny, "fusionroute", "sft", "mixture"))

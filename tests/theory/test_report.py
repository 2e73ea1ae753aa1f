"""results/theory/ builds from a small ReportConfig, deterministically; the rule file matches the defaults."""
from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import pytest

from fusionroute.theory.report import FILENAMES, ReportConfig, build

REPO = Path(__file__).resolve().parents[2]
SMALL = ReportConfig(appendix_cases=((2, 4),), seeds=(0,), horizons=(4,), uncovered=(0.0, 0.5), margins=(2.0, 1e3),
                     margin_horizon=4, margin_uncovered=0.5, n_prompts=6)


def _build(directory: Path) -> dict:
    return build(SMALL, {k: str(directory / name) for k, name in FILENAMES.items()}, log=lambda *_: None)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The small report built twice into separate directories: (first dir, its summary, second dir)."""
    root = tmp_path_factory.mktemp("theory_report")
    summary = _build(root / "a")
    _build(root / "b")
    return root / "a", summary, root / "b"


def test_small_report_builds_every_output_with_the_measured_numbers(two_builds):
    tmp_path, summary, _ = two_builds
    for name in FILENAMES.values():
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "theory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "theory.pdf").read_bytes()[:5] == b"%PDF-"

    (row,) = summary["appendix_a"]
    assert row["best_gap_deterministic"] == 1.375 and row["theorem_bound_gap"] == 0.0 and row["assumptions_hold"]
    assert row["learned_routing_only_worst_gap"] == [1.375] and row["learned_fusionroute_worst_gap"] == [0.0]

    learned = list(csv.DictReader((tmp_path / "learned.csv").open()))
    assert len(learned) == 3  # (T=4, 0.0, 2), (4, 0.5, 2), (4, 0.5, 1000) x one seed
    cells = {(float(r["uncovered"]), float(r["expert_margin"])): r for r in learned}
    assert float(cells[0.0, 2.0]["gap_routing_only"]) == 0.0 == float(cells[0.0, 2.0]["gap_fusionroute"])
    assert float(cells[0.5, 2.0]["gap_routing_only"]) > 0 == float(cells[0.5, 2.0]["gap_fusionroute"])
    # an expert far more confident than the router: Eq. 1 decodes what routing alone decodes
    assert cells[0.5, 1e3]["gap_fusionroute"] == cells[0.5, 1e3]["gap_routing_only"]

    table = (tmp_path / "theory.md").read_text()
    assert "| 2 | 4 | 4 | 64 | 1.375 | 1.062 | 0 |" in table
    assert json.loads((tmp_path / "summary.json").read_text())["learned"] == summary["learned"]


def test_rebuilding_gives_identical_files(two_builds):
    first, _, second = two_builds
    for name in ("theory.md", "appendix_a.csv", "learned.csv", "summary.json", "theory.pdf"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_rule_settings_are_the_report_defaults():
    text = (REPO / "workflow/rules/theory.smk").read_text()
    literal = re.search(r"^THEORY_SETTINGS = (\{.*?^\})", text, re.S | re.M).group(1)
    assert ReportConfig.from_dict(ast.literal_eval(literal)) == ReportConfig()
    for name in FILENAMES.values():
        assert f'{{THEORY_DIR}}/{name}"' in text, name


def test_unknown_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown theory settings"):
        ReportConfig.from_dict({"horizon": 3})

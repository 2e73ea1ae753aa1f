"""Figures 3 and 4: files written, exact PNG size, bar heights equal the input win rates."""
from __future__ import annotations

import math
import struct

import matplotlib
import pytest

from fusionroute.eval import figures as F
from fusionroute.io import write_json


def png_size(path):
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def result(win_rate, n=10):
    return {"win_rate": win_rate, "wins": 0, "ties": 0, "losses": 0, "n": n, "malformed": 0,
            "items": []}


def bar_heights(ax):
    return [p.get_height() for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]


def test_figure3_from_json_files_and_bar_heights(tmp_path):
    rates = {"llama3": {"fusionroute": 0.71, "sequence_selection": 0.43, "collab": 0.38},
             "gemma2": {"fusionroute": 0.64, "sequence_selection": 0.55, "collab": 0.52}}
    inputs = {}
    for family, methods in rates.items():
        for method, rate in methods.items():
            path = tmp_path / family / f"{method}.json"
            write_json(path, result(rate))
            inputs.setdefault(family, {})[method] = str(path)
    # Methods given out of canonical order: the figure still uses FusionRoute, SeqSel, Collab.
    inputs["llama3"] = dict(reversed(list(inputs["llama3"].items())))
    fig = F.plot_win_rates(inputs, tmp_path / "out" / "fig3.pdf",
                           methods=F.FIGURES["fig3"]["methods"])
    try:
        ax = fig.axes[0]
        heights = bar_heights(ax)
        expected = [rates[f][m] for m in ("fusionroute", "sequence_selection", "collab")
                    for f in ("llama3", "gemma2")]
        assert heights == pytest.approx(expected)
        # dashed parity line at 0.5
        assert any(line.get_linestyle() == "--" and list(line.get_ydata()) == [0.5, 0.5]
                   for line in ax.get_lines())
        texts = {t.get_text() for t in ax.texts}
        assert {f"{r:.2f}" for r in expected} <= texts
        assert [t.get_text() for t in ax.get_xticklabels()] == ["Llama-3", "Gemma-2"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "FusionRoute", "Sequence Selection", "Collab"]
    finally:
        matplotlib.pyplot.close(fig)
    for ext in ("pdf", "png"):
        path = tmp_path / "out" / f"fig3.{ext}"
        assert path.exists() and path.stat().st_size > 1000
    assert (tmp_path / "out" / "fig3.pdf").read_bytes()[:5] == b"%PDF-"
    assert png_size(tmp_path / "out" / "fig3.png") == (960, 540)
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_figure4_dicts_numbers_and_missing_cell(tmp_path):
    inputs = {"llama3": {"base": result(0.2), "sft": result(0.45), "fusionroute": 0.8},
              "gemma2": {"base": 0.3, "fusionroute": result(0.6)}}  # no SFT-only for gemma2
    fig = F.plot_win_rates(inputs, tmp_path / "fig4", methods=F.FIGURES["fig4"]["methods"],
                           figsize=(4, 3), dpi=100)
    try:
        heights = bar_heights(fig.axes[0])
        assert heights[:2] == pytest.approx([0.2, 0.3])
        assert heights[2] == pytest.approx(0.45) and math.isnan(heights[3])
        assert heights[4:] == pytest.approx([0.8, 0.6])
    finally:
        matplotlib.pyplot.close(fig)
    assert png_size(tmp_path / "fig4.png") == (400, 300)
    assert (tmp_path / "fig4.pdf").stat().st_size > 1000


def test_cli_and_make_figure(tmp_path, capsys):
    paths = {}
    for family, rate in (("tiny", 0.9), ("llama3", 0.35)):
        paths[family] = tmp_path / f"{family}.json"
        write_json(paths[family], result(rate))
    rc = F.main(["fig3", "--out", str(tmp_path / "figs" / "fig3.pdf"), "--inputs",
                 f"tiny:fusionroute={paths['tiny']}", f"llama3:fusionroute={paths['llama3']}",
                 f"llama3:collab={paths['tiny']}"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "figs" / "fig3.pdf"), str(tmp_path / "figs" / "fig3.png")]
    assert png_size(tmp_path / "figs" / "fig3.png") == (960, 540)
    assert F.parse_inputs(["a:b=c.json", "a:d=e=f.json"]) == {"a": {"b": "c.json", "d": "e=f.json"}}
    with pytest.raises(ValueError):
        F.parse_inputs(["no-method=x.json"])
    with pytest.raises(ValueError):
        F.plot_win_rates({}, tmp_path / "x.pdf")

"""Figures 3 and 4 of the paper: judge win rates as grouped bars, one group per model family.

- Figure 3: FusionRoute, Sequence Selection and Collab, each judged against the fine-tuned model.
- Figure 4: base model, SFT-only FusionRoute and full FusionRoute (CDPO ablation).

Inputs are `{family: {method: source}}` where a source is a judge result JSON path (written by
`fusionroute.eval.judge.judge_pairs`), such a result dict, or a bare win rate. Each figure is saved
as PDF and PNG (same stem). A dashed line marks 0.5 (parity with the comparison model) and each
bar carries its value. Methods keep the figure's canonical order; unknown methods follow in input
order; a method missing for a family leaves a gap.

Legend labels come from the caller (`labels`, method -> label): the workflow passes the method
catalogue's labels (workflow/rules/judge.smk `figure_labels`, through fusionroute.steps.judge.figure);
a method without one is shown by its name. This module keeps no method-label table.

CLI (the Snakemake rules call `make_figure` through fusionroute.steps.judge.figure):
    python -m fusionroute.eval.figures fig3 --out results/fig3.pdf \\
        --inputs llama3:fusionroute=results/llama3/judge/fusionroute.json ... \\
        [--labels fusionroute=FusionRoute ...]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fusionroute.io import read_json  # noqa: E402

FIGURES: dict[str, dict[str, Any]] = {
    "fig3": {
        "methods": ["fusionroute", "sequence_selection", "collab"],
        "ylabel": "Win rate vs fine-tuned model",
        "title": "Judge win rate against the fine-tuned model",
    },
    "fig4": {
        "methods": ["base", "fusionroute_sft", "fusionroute"],
        "ylabel": "Win rate",
        "title": "FusionRoute with vs. without CDPO",
    },
}

FAMILY_LABELS = {"llama3": "Llama-3", "gemma2": "Gemma-2", "tiny": "Tiny"}

FIGSIZE = (6.4, 3.6)  # inches
DPI = 150             # PNG pixel size = FIGSIZE * DPI = 960 x 540


def win_rate_of(source: Any) -> float:
    """Win rate from a judge result path, a result dict, or a number (None/NaN -> NaN)."""
    if isinstance(source, (str, os.PathLike)):
        source = read_json(source)
    if isinstance(source, Mapping):
        source = source.get("win_rate")
    if source is None:
        return math.nan
    return float(source)


def _method_order(inputs: Mapping[str, Mapping[str, Any]], canonical: list[str]) -> list[str]:
    seen = [m for m in canonical if any(m in methods for methods in inputs.values())]
    for methods in inputs.values():
        for m in methods:
            if m not in seen:
                seen.append(m)
    return seen


def plot_win_rates(inputs: Mapping[str, Mapping[str, Any]], out: str | os.PathLike, *,
                   methods: list[str] | None = None, title: str | None = None,
                   ylabel: str = "Win rate", figsize: tuple[float, float] = FIGSIZE,
                   dpi: int = DPI, labels: Mapping[str, str] | None = None):
    """Grouped bars (x: family, hue: method) of win rates; saves `<out stem>.pdf` and `.png`.

    Returns the matplotlib Figure (still open; the caller may inspect `fig.axes[0].patches`, whose
    bars come family by family within each method, in `methods` order, and must close it).
    Missing (family, method) cells are drawn as NaN-height bars (invisible) so the patch order is
    fixed: patch index = method_index * n_families + family_index.
    """
    families = list(inputs)
    if not families:
        raise ValueError("no inputs")
    methods = _method_order(inputs, methods or [])
    labels = dict(labels or {})
    rates = {(f, m): win_rate_of(inputs[f][m]) if m in inputs[f] else math.nan
             for f in families for m in methods}

    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    width = 0.8 / len(methods)
    cmap = plt.get_cmap("tab10")
    for j, method in enumerate(methods):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(families))]
        heights = [rates[(f, method)] for f in families]
        bars = ax.bar(xs, heights, width=width * 0.95, label=labels.get(method, method),
                      color=cmap(j % 10))
        for bar, h in zip(bars, heights):
            if not math.isnan(h):
                ax.annotate(f"{h:.2f}", (bar.get_x() + bar.get_width() / 2, h),
                            xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=8,
                            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"})
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels([FAMILY_LABELS.get(f, f) for f in families])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(ylabel)
    if title:  # wrapped: a long title would run off the left edge of the figure
        ax.set_title(textwrap.fill(title, 60), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("") if out.suffix.lower() in (".pdf", ".png") else out
    for ext in ("pdf", "png"):
        target = stem.with_name(stem.name + "." + ext)
        tmp = target.with_name(f".{target.name}.tmp")
        fig.savefig(tmp, format=ext, dpi=dpi)  # no bbox_inches="tight": exact pixel size
        os.replace(tmp, target)
    return fig


def make_figure(kind: str, inputs: Mapping[str, Mapping[str, Any]], out: str | os.PathLike,
                **kwargs) -> list[Path]:
    """Figure 3 or 4 ("fig3"/"fig4") from judge results; returns the written [pdf, png] paths."""
    spec = FIGURES[kind]
    kwargs.setdefault("methods", spec["methods"])
    kwargs.setdefault("title", spec["title"])
    kwargs.setdefault("ylabel", spec["ylabel"])
    fig = plot_win_rates(inputs, out, **kwargs)
    plt.close(fig)
    stem = Path(out).with_suffix("") if Path(out).suffix.lower() in (".pdf", ".png") else Path(out)
    return [stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png")]


def figure3(inputs, out, **kwargs) -> list[Path]:
    return make_figure("fig3", inputs, out, **kwargs)


def figure4(inputs, out, **kwargs) -> list[Path]:
    return make_figure("fig4", inputs, out, **kwargs)


def parse_inputs(specs: list[str]) -> dict[str, dict[str, str]]:
    """["family:method=path", ...] -> {family: {method: path}} (input order kept)."""
    inputs: dict[str, dict[str, str]] = {}
    for spec in specs:
        key, sep, path = spec.partition("=")
        family, sep2, method = key.partition(":")
        if not (sep and sep2 and family and method and path):
            raise ValueError(f"bad --inputs entry {spec!r}; expected family:method=path")
        inputs.setdefault(family, {})[method] = path
    return inputs


def parse_labels(specs: list[str]) -> dict[str, str]:
    """["method=Label", ...] -> {method: label}."""
    labels = {}
    for spec in specs:
        method, sep, label = spec.partition("=")
        if not (sep and method and label):
            raise ValueError(f"bad --labels entry {spec!r}; expected method=label")
        labels[method] = label
    return labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Win-rate figures (paper Figures 3 and 4).")
    p.add_argument("kind", choices=sorted(FIGURES))
    p.add_argument("--out", required=True, help="output path; .pdf and .png are both written")
    p.add_argument("--inputs", nargs="+", required=True, help="family:method=judge_result.json")
    p.add_argument("--labels", nargs="+", default=[], help="method=legend label (default: the name)")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    kwargs: dict[str, Any] = {"labels": parse_labels(args.labels)}
    if args.title:
        kwargs["title"] = args.title
    for path in make_figure(args.kind, parse_inputs(args.inputs), args.out, **kwargs):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""results/theory/: the Section 4 testbed's table and figure (Snakemake rule `theory`).

    ./run python -m fusionroute.theory.report --out results/theory

Part A (exact): for every (n, T) of `ReportConfig.appendix_cases`, Theorem 4.3's family, the best
worst-case gap of every deterministic and randomised routing rule against the theorem's T/2 - 2,
the theorem's assumptions on every member, Eq. 5's greedy-Q router, and the project's SFT router
trained on pi*'s data and decoded routing-only and with Eq. 1.
Part B (learned): random-reward MDPs over a grid of horizons T and coverage (the share of states
where no expert's greedy token is optimal), plus a sweep of the experts' confidence; per cell and
seed, one router trained with the project's SFT and decoded both ways, with the Eq. 5 router and
the best routing rule (oracle) as references.

Outputs: theory.md (both tables, aggregated over seeds), appendix_a.csv, learned.csv (one row per
cell and seed), theory.png / theory.pdf (four panels), summary.json (everything above). Every
number is a pure function of the config: rebuilding gives identical files (timings go to the log).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from fusionroute.io import atomic_write_text, write_json
from fusionroute.theory.appendix_a import (AppendixAConfig, check_assumptions, closed_form_gaps, family,
                                           family_values, greedy_q_rule, learned_on_family, solve_game)
from fusionroute.theory.learned import RouterTrainConfig, WorldConfig, evaluate, make_world

OUTPUTS = ("table_md", "appendix_a_csv", "learned_csv", "figure_png", "figure_pdf", "summary")
FILENAMES = {"table_md": "theory.md", "appendix_a_csv": "appendix_a.csv", "learned_csv": "learned.csv",
             "figure_png": "theory.png", "figure_pdf": "theory.pdf", "summary": "summary.json"}


@dataclass(frozen=True)
class ReportConfig:
    appendix_cases: tuple[tuple[int, int], ...] = ((2, 4), (2, 6), (2, 8), (2, 10), (3, 4), (3, 6), (3, 8), (4, 4), (4, 6))
    epsilon: float = 0.125
    delta: float = 0.25
    family_margin: float = 2.0  # expert confidence of the softmax experts used for the learned rows of part A
    seeds: tuple[int, ...] = (0, 1, 2)
    horizons: tuple[int, ...] = (2, 4, 6, 8)
    uncovered: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)
    margins: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    margin_horizon: int = 6  # where the margin sweep runs
    margin_uncovered: float = 0.25
    n_prompts: int = 16
    vocab_size: int = 4
    n_experts: int = 3
    expert_margin: float = 2.0  # the grid's expert confidence (the sweep varies it)
    train: RouterTrainConfig = field(default_factory=RouterTrainConfig)

    @classmethod
    def from_dict(cls, values: dict) -> "ReportConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown theory settings {sorted(unknown)}")
        out = dict(values)
        if "train" in out:
            out["train"] = RouterTrainConfig(**out["train"])
        for key in ("seeds", "horizons", "uncovered", "margins"):
            if key in out:
                out[key] = tuple(out[key])
        if "appendix_cases" in out:
            out["appendix_cases"] = tuple(tuple(c) for c in out["appendix_cases"])
        return cls(**out)

    def learned_cells(self) -> list[tuple[int, float, float]]:
        """(T, uncovered, expert margin): the T x coverage grid, then the margin sweep."""
        cells = [(T, u, self.expert_margin) for T in self.horizons for u in self.uncovered]
        cells += [(self.margin_horizon, self.margin_uncovered, m) for m in self.margins]
        return list(dict.fromkeys(cells))


# ---------------------------------------------------------------------------------------------
# part A


def appendix_row(cfg: ReportConfig, n: int, T: int) -> dict:
    a = AppendixAConfig(n, T, cfg.epsilon, cfg.delta)
    game = solve_game(a)
    fam = family(a)
    checks = [check_assumptions(a, m, v) for m, v in zip(fam.mdps, fam.values)]
    det_closed, rand_closed = closed_form_gaps(a)
    learned = [learned_on_family(a, cfg.family_margin, _train(cfg, s)) for s in cfg.seeds]
    return {
        "n_experts": n, "T": T, "family_size": len(game.members), "deterministic_rules": game.n_rules,
        "observation_histories": game.n_histories, "history_needed": game.history_needed,
        "v_star": game.v_star,
        "best_gap_deterministic": game.best_deterministic_gap, "closed_form_deterministic": det_closed,
        "best_gap_randomized": game.v_star - game.best_randomized_value(), "closed_form_randomized": rand_closed,
        "theorem_bound_gap": game.theorem_bound_gap,
        "eq8_best_routing_gap": max(c.best_routing_gap for c in checks),
        "eq9_single_policy": max(c.single_policy_coverage for c in checks),
        "eq10_generalization": max(c.generalization_coverage for c in checks),
        "assumptions_hold": all(c.holds(a.delta) for c in checks),
        "greedy_q_worst_gap": game.v_star - float(family_values(a, greedy_q_rule).min()),
        "learned_routing_only_worst_gap": [float(r.gap_routing_only.max()) for r in learned],
        "learned_fusionroute_worst_gap": [float(r.gap_fusionroute.max()) for r in learned],
    }


# ---------------------------------------------------------------------------------------------
# part B


def _train(cfg: ReportConfig, seed: int) -> RouterTrainConfig:
    return RouterTrainConfig(**{**asdict(cfg.train), "seed": seed})


def learned_row(cfg: ReportConfig, T: int, uncovered: float, margin: float, seed: int) -> dict:
    # the same seed draws the same rewards for every coverage and margin at a given T (paired cells)
    world = make_world(WorldConfig(cfg.n_prompts, cfg.vocab_size, T, cfg.n_experts, uncovered, margin, seed))
    result = evaluate(world, _train(cfg, seed))
    row = {"T": T, "uncovered": uncovered, "expert_margin": margin, "seed": seed}
    row.update({k: v for k, v in asdict(result).items() if k != "per_prompt"})
    return row


# ---------------------------------------------------------------------------------------------
# tables


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()})
    return buffer.getvalue()


def _num(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".") if x == x else "nan"


def _spread(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return _num(lo) if lo == hi else f"{_num(lo)}-{_num(hi)}"


def _markdown_table(columns: list[str], lines: list[str], note: str) -> str:
    """A Markdown table (header, separator, the given row lines) and a note below it."""
    head = "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|\n"
    return head + "\n".join(lines) + "\n\n" + note


APPENDIX_COLUMNS = ["n", "T", "members", "rules", "best gap, deterministic", "best gap, randomised",
                    "theorem: gap >= T/2-2", "Eq. 8 / 9 / 10 (<= Delta)", "Eq. 5 router", "SFT router, routing only",
                    "SFT router + Eq. 1"]
LEARNED_COLUMNS = ["T", "uncovered", "expert margin", "pi* responses meeting a hole", "V*", "routing only (SFT)",
                   "Eq. 5 router", "best routing rule", "FusionRoute (SFT, Eq. 1)", "prompts FusionRoute misses",
                   "router margin"]


def appendix_markdown(rows: list[dict], cfg: ReportConfig) -> str:
    lines = []
    for r in rows:
        eqs = f"{_num(r['eq8_best_routing_gap'])} / {_num(r['eq9_single_policy'])} / {_num(r['eq10_generalization'])}"
        lines.append(
            f"| {r['n_experts']} | {r['T']} | {r['family_size']} | {r['deterministic_rules']:.3g} "
            f"| {_num(r['best_gap_deterministic'])} | {_num(r['best_gap_randomized'])} | {_num(r['theorem_bound_gap'])} "
            f"| {eqs}{'' if r['assumptions_hold'] else ' (violated)'} | {_num(r['greedy_q_worst_gap'])} "
            f"| {_spread(r['learned_routing_only_worst_gap'])} | {_spread(r['learned_fusionroute_worst_gap'])} |")
    note = (f"Worst case over the family's members of V* - V (V* = T), epsilon = {cfg.epsilon}, Delta = {cfg.delta}. "
            "'rules': behaviourally distinct deterministic routing rules on the family. Learned rows: range over "
            f"seeds {list(cfg.seeds)}, softmax experts with margin {cfg.family_margin}.\n")
    return _markdown_table(APPENDIX_COLUMNS, lines, note)


def aggregate(rows: list[dict], cfg: ReportConfig) -> list[dict]:
    out = []
    for T, u, m in cfg.learned_cells():
        cell = [r for r in rows if (r["T"], r["uncovered"], r["expert_margin"]) == (T, u, m)]
        agg = {"T": T, "uncovered": u, "expert_margin": m, "seeds": len(cell)}
        for key in ("uncovered_share", "prompts_exposed", "v_star", "gap_routing_only", "gap_routing_eq5",
                    "gap_routing_oracle", "gap_fusionroute", "prompts_routing_only_suboptimal",
                    "prompts_fusionroute_suboptimal", "router_min_margin", "routing_accuracy"):
            values = np.array([r[key] for r in cell if r[key] is not None])  # routing_accuracy: None = no covered state
            agg[key] = float(values.mean()) if len(values) else None
            agg[key + "_std"] = float(values.std()) if len(values) else None
        out.append(agg)
    return out


def learned_markdown(agg: list[dict], cfg: ReportConfig) -> str:
    lines = []
    for a in agg:
        def pm(key: str) -> str:
            return f"{a[key]:.3f} ± {a[key + '_std']:.3f}"

        lines.append(f"| {a['T']} | {_num(a['uncovered_share'])} | {_num(a['expert_margin'])} "
                     f"| {a['prompts_exposed']:.2f} | {a['v_star']:.3f} | {pm('gap_routing_only')} "
                     f"| {pm('gap_routing_eq5')} | {pm('gap_routing_oracle')} | {pm('gap_fusionroute')} "
                     f"| {a['prompts_fusionroute_suboptimal']:.2f} | {a['router_min_margin']:.1f} |")
    note = (f"Mean ± std over seeds {list(cfg.seeds)} of the mean over {cfg.n_prompts} prompts of V*(x) - V(x) "
            f"(rewards in [0, 1] per token, V = {cfg.vocab_size}, {cfg.n_experts} experts). 'router margin': "
            "smallest log-prob lead of the router's own pi* token over its runner-up on the SFT states.\n")
    return _markdown_table(LEARNED_COLUMNS, lines, note)


# ---------------------------------------------------------------------------------------------
# figure


def figure(appendix: list[dict], agg: list[dict], cfg: ReportConfig):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    for n, color in zip(sorted({r["n_experts"] for r in appendix}), ("C0", "C1", "C2", "C3")):
        rows = [r for r in appendix if r["n_experts"] == n]
        T = [r["T"] for r in rows]
        ax.plot(T, [r["best_gap_deterministic"] for r in rows], "o-", color=color, label=f"n={n}: best rule (deterministic)")
        ax.plot(T, [r["best_gap_randomized"] for r in rows], "s--", color=color, mfc="none", label=f"n={n}: best rule (randomised)")
        ax.plot(T, [max(r["learned_routing_only_worst_gap"]) for r in rows], "x", color=color, ms=9,
                label=f"n={n}: SFT router, routing only")
    Ts = sorted({r["T"] for r in appendix})
    ax.plot(Ts, [t / 2 - 2 for t in Ts], "k:", label="Theorem 4.3: T/2 - 2")
    ax.plot(Ts, [max(max(r["learned_fusionroute_worst_gap"]) for r in appendix if r["T"] == t) for t in Ts],
            "D-", color="C4", label="SFT router + Eq. 1 (all n)")
    ax.set(title="(a) Appendix A family: worst case over members", xlabel="T", ylabel="V* - V")
    ax.legend(fontsize=6, ncol=2, loc="upper left")

    def lines(ax, cells, x_key, log=False):
        x = [c[x_key] for c in cells]
        for key, label, style in (("gap_routing_only", "routing only (SFT router)", "o-"),
                                  ("gap_routing_eq5", "Eq. 5 router (knows Q*)", "^--"),
                                  ("gap_routing_oracle", "best routing rule (oracle)", "v:"),
                                  ("gap_fusionroute", "FusionRoute (SFT router, Eq. 1)", "D-")):
            ax.errorbar(x, [c[key] for c in cells], yerr=[c[key + "_std"] for c in cells], fmt=style,
                        capsize=3, label=label)
        if log:
            ax.set_xscale("log", base=2)
        ax.set_ylabel("V* - V (mean over prompts)")

    grid = [a for a in agg if a["expert_margin"] == cfg.expert_margin]
    by_coverage = [a for a in grid if a["T"] == cfg.margin_horizon]
    lines(axes[0, 1], by_coverage, "uncovered_share")
    axes[0, 1].set(title=f"(b) learned, T={cfg.margin_horizon}", xlabel="share of states no expert covers")
    axes[0, 1].legend(fontsize=7)
    by_horizon = [a for a in grid if a["uncovered"] == cfg.margin_uncovered]
    lines(axes[1, 0], by_horizon, "T")
    axes[1, 0].set(title=f"(c) learned, uncovered={cfg.margin_uncovered}", xlabel="T")
    by_margin = [a for a in agg if a["T"] == cfg.margin_horizon and a["uncovered"] == cfg.margin_uncovered]
    by_margin = sorted(by_margin, key=lambda a: a["expert_margin"])
    lines(axes[1, 1], by_margin, "expert_margin", log=True)
    router_margin = float(np.mean([a["router_min_margin"] for a in by_margin]))
    axes[1, 1].axvline(router_margin, color="grey", lw=0.8)
    axes[1, 1].text(router_margin, 0.2, " smallest lead the router\n learned on its SFT states", fontsize=7, color="grey")
    axes[1, 1].set(title=f"(d) learned, T={cfg.margin_horizon}, uncovered={cfg.margin_uncovered}",
                   xlabel="expert confidence (logit margin of its greedy token)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# build


def build(cfg: ReportConfig, outputs: dict[str, str], log=print) -> dict:
    missing = set(OUTPUTS) - set(outputs)
    if missing:
        raise ValueError(f"missing outputs {sorted(missing)}")
    began = time.perf_counter()
    appendix = []
    for n, T in cfg.appendix_cases:
        start = time.perf_counter()
        appendix.append(appendix_row(cfg, n, T))
        log(f"appendix A n={n} T={T}: {time.perf_counter() - start:.2f}s")
    rows = []
    for T, u, m in cfg.learned_cells():
        start = time.perf_counter()
        rows += [learned_row(cfg, T, u, m, s) for s in cfg.seeds]
        log(f"learned T={T} uncovered={u} margin={m}: {time.perf_counter() - start:.2f}s")
    agg = aggregate(rows, cfg)

    text = ("## Appendix A family (exact)\n\n" + appendix_markdown(appendix, cfg)
            + "\n## Learned testbed\n\n" + learned_markdown(agg, cfg))
    atomic_write_text(outputs["table_md"], text)
    atomic_write_text(outputs["appendix_a_csv"], _csv(appendix))
    atomic_write_text(outputs["learned_csv"], _csv(rows))
    fig = figure(appendix, agg, cfg)
    for key, kwargs in (("figure_png", {"dpi": 150}), ("figure_pdf", {"metadata": {"CreationDate": None}})):
        Path(outputs[key]).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(outputs[key], **kwargs)
    summary = {"config": json.loads(json.dumps(asdict(cfg))), "appendix_a": appendix, "learned": rows, "learned_mean": agg}
    write_json(outputs["summary"], summary)
    log(f"built in {time.perf_counter() - began:.1f}s wall, {time.process_time():.1f}s CPU (process)")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/theory", help="output directory")
    parser.add_argument("--settings", default=None, help="JSON file of ReportConfig overrides")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("FUSIONROUTE_NO_PROGRESS", "1")
    import torch

    torch.set_num_threads(max(1, args.threads))  # a tiny model: more threads only add contention
    overrides = json.loads(Path(args.settings).read_text()) if args.settings else {}
    build(ReportConfig.from_dict(overrides), {k: str(Path(args.out) / name) for k, name in FILENAMES.items()})


if __name__ == "__main__":
    main()

"""Tables 1 and 2 as LaTeX (booktabs) and Markdown, read from scores.json files only.

Layout as in the paper: a block per model family, rows = methods grouped as the paper groups
them, a column per benchmark (the registry's order and labels: GSM8K, MATH500, MBPP, HumanEval,
IfEval) and their average; the best value of each column within a family is bold.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusionroute.eval.benchmarks import registry
from fusionroute.io import atomic_write_text, read_json


def columns() -> list[tuple[str, str]]:
    """(benchmark, column label) in table order, read from the registry when a table is made."""
    return [(b.name, b.label) for b in registry().values()]


def benchmarks() -> list[str]:
    return [name for name, _ in columns()]


@dataclass
class Row:
    family: str  # display name of the family block
    group: str  # e.g. "Expert Models"
    method: str  # display name
    scores: dict[str, float]  # benchmark -> score in [0, 1]
    note: str = ""  # e.g. cost, shown in the Markdown table only
    stale: frozenset[str] = frozenset()  # benchmarks whose cell was made by code changed since: marked STALE_MARK

    @property
    def average(self) -> float:
        names = benchmarks()
        return sum(self.scores[b] for b in names) / len(names)


def load_row(family: str, group: str, method: str, score_files: dict[str, str | Path]) -> Row:
    names = benchmarks()
    missing = [b for b in names if b not in score_files]
    if missing:
        raise ValueError(f"{family}/{method}: no scores for {missing}")
    return Row(family, group, method, {b: float(read_json(score_files[b])["score"]) for b in names})


def _best(rows: list[Row]) -> dict[str, float]:
    best = {b: max(r.scores[b] for r in rows) for b in benchmarks()}
    best["avg"] = max(r.average for r in rows)
    return best


STALE_MARK = "\u2020"  # dagger: the cell's code changed since it was made (fusionroute.provenance)


def _cell(value: float, best: float, bold: str, stale: bool = False, mark: str = STALE_MARK) -> str:
    text = f"{value:.2f}"
    text = bold.format(text) if round(value, 2) == round(best, 2) else text
    return text + mark if stale else text


def stale_note(rows: list[Row]) -> str:
    """A footnote naming the marked cells ("" when none, so clean tables are unchanged)."""
    cells = [f"{r.family}/{r.method}/{b}" for r in rows for b in benchmarks() if b in r.stale]
    if not cells:
        return ""
    return (f"{STALE_MARK} made by code that has changed since ({', '.join(cells)}); "
            "`python -m fusionroute.provenance results/<world>` prints the command that reruns them.")


def to_latex(rows: list[Row], caption: str, label: str) -> str:
    cols = columns()
    header = " & ".join(["Model", *[name for _, name in cols], "Avg."])
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{l" + "c" * (len(cols) + 1) + "}",
        r"\toprule",
        header + r" \\",
    ]
    for family in dict.fromkeys(r.family for r in rows):
        block = [r for r in rows if r.family == family]
        best = _best(block)
        lines += [r"\midrule", rf"\multicolumn{{{len(cols) + 2}}}{{c}}{{\textit{{{family}}}}} \\"]
        for group in dict.fromkeys(r.group for r in block):
            lines += [r"\midrule", rf"\multicolumn{{{len(cols) + 2}}}{{l}}{{\textbf{{{group}}}}} \\"]
            for row in (r for r in block if r.group == group):
                cells = [_cell(row.scores[b], best[b], r"\textbf{{{}}}", b in row.stale, r"$^\dagger$")
                         for b, _ in cols]
                cells.append(_cell(row.average, best["avg"], r"\textbf{{{}}}"))
                lines.append(" & ".join([_latex_escape(row.method), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if stale_note(rows):
        lines.append(r"\par\footnotesize " + _latex_escape(stale_note(rows)).replace(STALE_MARK, r"$^\dagger$"))
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def to_markdown(rows: list[Row]) -> str:
    with_note = any(r.note for r in rows)
    cols = columns()
    head = ["Family", "Method", *[name for _, name in cols], "Avg"] + (["Cost"] if with_note else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for family in dict.fromkeys(r.family for r in rows):
        block = [r for r in rows if r.family == family]
        best = _best(block)
        for row in block:
            cells = [_cell(row.scores[b], best[b], "**{}**", b in row.stale) for b, _ in cols]
            cells.append(_cell(row.average, best["avg"], "**{}**"))
            out.append("| " + " | ".join([family, row.method, *cells] + ([row.note] if with_note else [])) + " |")
    note = stale_note(rows)
    return "\n".join(out) + "\n" + (f"\n{note}\n" if note else "")


def _latex_escape(text: str) -> str:
    return text.replace("&", r"\&").replace("_", r"\_").replace("%", r"\%")


def write_table(rows: list[Row], tex_path: str | Path, caption: str, label: str) -> None:
    atomic_write_text(tex_path, to_latex(rows, caption, label))
    atomic_write_text(Path(tex_path).with_suffix(".md"), to_markdown(rows))

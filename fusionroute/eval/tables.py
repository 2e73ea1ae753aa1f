"""Tables 1 and 2 as LaTeX (booktabs) and Markdown, read from scores.json files only.

Layout as in the paper: a block per model family, rows = methods grouped as the paper groups
them, columns GSM8K, MATH500, MBPP, HumanEval, IfEval and their average; the best value of each
column within a family is bold.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from fusionroute.io import atomic_write_text, read_json

COLUMNS = [("gsm8k", "GSM8K"), ("math500", "MATH500"), ("mbpp", "MBPP"), ("humaneval", "HumanEval"), ("ifeval", "IfEval")]


@dataclass
class Row:
    family: str  # display name of the family block
    group: str  # e.g. "Expert Models"
    method: str  # display name
    scores: dict[str, float]  # benchmark -> score in [0, 1]
    note: str = ""  # e.g. cost, shown in the Markdown table only

    @property
    def average(self) -> float:
        return sum(self.scores[b] for b, _ in COLUMNS) / len(COLUMNS)


def load_row(family: str, group: str, method: str, score_files: dict[str, str | Path]) -> Row:
    missing = [b for b, _ in COLUMNS if b not in score_files]
    if missing:
        raise ValueError(f"{family}/{method}: no scores for {missing}")
    return Row(family, group, method, {b: float(read_json(score_files[b])["score"]) for b, _ in COLUMNS})


def _best(rows: list[Row]) -> dict[str, float]:
    best = {b: max(r.scores[b] for r in rows) for b, _ in COLUMNS}
    best["avg"] = max(r.average for r in rows)
    return best


def _cell(value: float, best: float, bold: str) -> str:
    text = f"{value:.2f}"
    return bold.format(text) if round(value, 2) == round(best, 2) else text


def to_latex(rows: list[Row], caption: str, label: str) -> str:
    header = " & ".join(["Model", *[name for _, name in COLUMNS], "Avg."])
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{l" + "c" * (len(COLUMNS) + 1) + "}",
        r"\toprule",
        header + r" \\",
    ]
    for family in dict.fromkeys(r.family for r in rows):
        block = [r for r in rows if r.family == family]
        best = _best(block)
        lines += [r"\midrule", rf"\multicolumn{{{len(COLUMNS) + 2}}}{{c}}{{\textit{{{family}}}}} \\"]
        for group in dict.fromkeys(r.group for r in block):
            lines += [r"\midrule", rf"\multicolumn{{{len(COLUMNS) + 2}}}{{l}}{{\textbf{{{group}}}}} \\"]
            for row in (r for r in block if r.group == group):
                cells = [_cell(row.scores[b], best[b], r"\textbf{{{}}}") for b, _ in COLUMNS]
                cells.append(_cell(row.average, best["avg"], r"\textbf{{{}}}"))
                lines.append(" & ".join([_latex_escape(row.method), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_markdown(rows: list[Row]) -> str:
    with_note = any(r.note for r in rows)
    head = ["Family", "Method", *[name for _, name in COLUMNS], "Avg"] + (["Cost"] if with_note else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for family in dict.fromkeys(r.family for r in rows):
        block = [r for r in rows if r.family == family]
        best = _best(block)
        for row in block:
            cells = [_cell(row.scores[b], best[b], "**{}**") for b, _ in COLUMNS] + [_cell(row.average, best["avg"], "**{}**")]
            out.append("| " + " | ".join([family, row.method, *cells] + ([row.note] if with_note else [])) + " |")
    return "\n".join(out) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("&", r"\&").replace("_", r"\_").replace("%", r"\%")


def write_table(rows: list[Row], tex_path: str | Path, caption: str, label: str) -> None:
    atomic_write_text(tex_path, to_latex(rows, caption, label))
    atomic_write_text(Path(tex_path).with_suffix(".md"), to_markdown(rows))


def main(argv: list[str] | None = None) -> None:
    """Render a table from a JSON spec: {"caption", "label", "rows": [{family, group, method, scores: {b: path}}]}."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("spec")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    spec = read_json(args.spec)
    rows = [load_row(r["family"], r["group"], r["method"], r["scores"]) for r in spec["rows"]]
    write_table(rows, args.out, spec["caption"], spec["label"])


if __name__ == "__main__":
    main()

"""The paper beside the reproduction: side-by-side tables and a table of the paper's claims.

Side by side (`write_side_by_side`): Table 1 or Table 2 with, in every cell, our value and the
paper's, "ours | paper" (results/reference/paper_tables.csv), plus the difference of the averages.
Rows are matched by family and method: a family by its label ("Llama-3", "Gemma-2"); a family the
paper does not have (the tiny world's "Tiny-Llama") is compared with the paper's Llama-3 block,
which the caption states. A method by its catalogue name (`PAPER_NAMES`), an expert by its role
(the start of its name: math..., cod..., instruct...), since the paper writes "Instruct Expert"
for Llama-3 and "Instruction Expert" for Gemma-2. A row the paper lacks shows "—" as the paper's.
Where the paper's printed average is not the mean of its five printed cells (beyond their
rounding), the printed average is used and the caption says so.

Claims (`write_claims`, results/<world>/claims.md and .json), per family, each tested on our data:
FusionRoute's Table 1 average above each expert's (and above every expert's), above the fine-tuned
model's, above Sequence Selection's and Collab's, above routing-only's (Table 2); FusionRoute
with CDPO above FusionRoute after SFT only in the judge's win rate against the fine-tuned model
(Figure 4); and the Spearman rank correlation of our Table 1 averages with the paper's.

Statistics (restated in claims.md):
- Average = the mean over the five benchmarks of the per-benchmark accuracy (the tables' Avg, a
  macro average). For methods A and B scored on the same items, D = (1/K) sum_b mean_{i in b}(a_i - b_i)
  with a_i, b_i in {0, 1} per item (judge claim: one stratum, a_i = 1 / 0.5 / 0 for a win / tie /
  loss against the fine-tuned model, malformed verdicts of either side excluded).
- p-value: paired sign-flip permutation test stratified by benchmark, two-sided. Under H0 (A and B
  exchangeable on every item) each item's difference keeps its size and gets a random sign;
  p = (1 + #{|D*| >= |D|}) / (R + 1) over R seeded Monte Carlo draws (drawn as binomial counts of
  flipped signs per benchmark and per size of difference, the same distribution as flipping each
  item). With one benchmark and 0/1 outcomes this is the exact McNemar test up to Monte Carlo error.
- 95% CI of D: paired bootstrap over items, stratified by benchmark (each benchmark's items
  resampled with replacement, drawn as multinomial counts), percentile interval, seeded.
- Verdict: "holds" if D > 0 and p < alpha (0.05, two-sided), "does not hold" if D < 0 and
  p < alpha, else "cannot tell". "Above every expert" holds if every expert's row holds (an
  intersection-union test, level alpha), does not hold if some expert's row has D < 0 with
  p < alpha / (number of experts) (Bonferroni), else cannot tell.
- Minimum detectable difference (MDD) at 80% power: (z_{1-alpha/2} + z_{0.80}) * SE0 with
  SE0 = (1/K) sqrt(sum_b mean_b(d_i^2) / n_b), the standard error of D under H0 at the observed
  discordance (normal approximation; for 0/1 outcomes mean_b(d_i^2) is the share of items on which
  A and B disagree). "n for MDD 0.05" scales every benchmark's n by (MDD / 0.05)^2 (same
  discordance assumed). Not estimable when A and B never disagree.
- Spearman's rho: Pearson correlation of average ranks (ties share their mean rank), over the
  methods of our Table 1 that the paper's Table 1 has; p-value two-sided, by permutation of the
  paper's ranks (exact up to 9 methods, else seeded Monte Carlo).

Missing or malformed inputs raise ClaimsInputError naming the file; nothing is guessed.
This module holds no workflow step (its steps live in fusionroute.steps.claims).
"""
from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np

from fusionroute.eval.tables import _latex_escape, benchmarks, columns
from fusionroute.io import atomic_write_text, write_json


def paper_columns() -> list[str]:
    """The columns of the paper-tables CSV: a score per benchmark (the registry's) and avg."""
    return ["table", "family", "group", "method", *benchmarks(), "avg"]

REFERENCE_FAMILY = "Llama-3"  # the paper's block a family without a paper counterpart is compared with
# our catalogue name -> the paper's row name (experts are matched by role, see expert_role)
PAPER_NAMES = {
    "sequence_selection": "Sequence Selection",
    "collab": "Collab",
    "finetuned": "Fine-tuned Model",
    "dare": "DARE",
    "task_arithmetic": "TaskArithmetic",
    "fusionroute": "FusionRoute",
    "fusionroute_routing_only": "FusionRoute w/o complementary logits",
}
EXPERT_ROLES = (("math", "math"), ("cod", "code"), ("instruct", "instruct"))
HOLDS, DOES_NOT_HOLD, CANNOT_TELL = "holds", "does not hold", "cannot tell"
JUDGE_VALUES = {"win": 1.0, "tie": 0.5, "loss": 0.0, "malformed": None}
DASH = "—"
TARGET_MDD = 0.05  # the "tell a 5-point difference"
EXACT_PERMUTATIONS_UP_TO = 9  # methods; 9! = 362,880 permutations of the ranks


class ClaimsInputError(ValueError):
    """A missing or malformed input file (the message names it)."""


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaperRow:
    table: int
    family: str
    group: str
    method: str
    scores: dict[str, float]
    avg: float

    @property
    def key(self) -> str:
        return paper_key(self.method)

    @property
    def mean_of_cells(self) -> float:
        names = benchmarks()
        return sum(self.scores[b] for b in names) / len(names)


def read_paper_tables(path: str | Path) -> list[PaperRow]:
    """The paper's Tables 1 and 2 (columns paper_columns(), scores in [0, 1])."""
    path = Path(path)
    if not path.is_file():
        raise ClaimsInputError(f"{path}: the paper's tables are not there (file not found)")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        wanted, names = paper_columns(), benchmarks()
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ClaimsInputError(f"{path}: header lacks the column(s) {missing} (has {header})")
        rows: list[PaperRow] = []
        seen: set[tuple] = set()
        for line, raw in enumerate(reader, start=2):
            if None in raw or any(raw[c] is None for c in wanted):
                raise ClaimsInputError(f"{path}, line {line}: {len(header)} columns expected")
            try:
                table = int(raw["table"])
                values = {c: float(raw[c]) for c in [*names, "avg"]}
            except ValueError:
                raise ClaimsInputError(f"{path}, line {line}: table and scores must be numbers: {raw}") from None
            if table not in (1, 2):
                raise ClaimsInputError(f"{path}, line {line}: table {table} (1 or 2 expected)")
            bad = [c for c, v in values.items() if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
            if bad:
                raise ClaimsInputError(f"{path}, line {line}: {bad} outside [0, 1]")
            family, method = raw["family"].strip(), raw["method"].strip()
            if not family or not method:
                raise ClaimsInputError(f"{path}, line {line}: empty family or method")
            ident = (table, family, paper_key(method))
            if ident in seen:
                raise ClaimsInputError(f"{path}, line {line}: a second row for {method!r} in table {table}, {family}")
            seen.add(ident)
            rows.append(PaperRow(table, family, raw["group"].strip(), method,
                                 {b: values[b] for b in names}, values["avg"]))
    if not rows:
        raise ClaimsInputError(f"{path}: no rows")
    return rows


@dataclass(frozen=True)
class ScoreFile:
    path: str
    score: float
    outcomes: dict[str, float]  # id -> 1.0 correct / 0.0 wrong, in file order
    partial: bool = False


def read_scores(path: str | Path, benchmark: str | None = None) -> ScoreFile:
    """A scores.json (fusionroute.eval.scoring): per-sample {"id", "correct"}; its "score" must be
    their mean and its "benchmark" (if given) the expected one."""
    data = _read_json_file(path, "scores file")
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise ClaimsInputError(f"{path}: not a scores.json (no 'samples' list)")
    if benchmark is not None and data.get("benchmark", benchmark) != benchmark:
        raise ClaimsInputError(f"{path}: scores of {data.get('benchmark')!r}, expected {benchmark!r}")
    if not data["samples"]:
        raise ClaimsInputError(f"{path}: no scored samples")
    outcomes: dict[str, float] = {}
    for index, sample in enumerate(data["samples"]):
        if not isinstance(sample, dict) or "id" not in sample or "correct" not in sample:
            raise ClaimsInputError(f"{path}: sample {index} lacks 'id' or 'correct'")
        sid, correct = str(sample["id"]), sample["correct"]
        if isinstance(correct, bool):
            value = float(correct)
        elif type(correct) is int and correct in (0, 1):
            value = float(correct)
        else:
            raise ClaimsInputError(f"{path}: sample {sid!r} has 'correct' = {correct!r} (true/false expected)")
        if sid in outcomes:
            raise ClaimsInputError(f"{path}: sample id {sid!r} appears twice")
        outcomes[sid] = value
    score = data.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ClaimsInputError(f"{path}: 'score' = {score!r} is not a number")
    mean = sum(outcomes.values()) / len(outcomes)
    if abs(float(score) - mean) > 1e-9:
        raise ClaimsInputError(f"{path}: 'score' {score} is not the mean of its samples' 'correct' ({mean})")
    return ScoreFile(str(path), float(score), outcomes, bool(data.get("partial", False)))


@dataclass(frozen=True)
class JudgeFile:
    path: str
    values: dict[str, float | None]  # id -> 1 win / 0.5 tie / 0 loss / None malformed, in file order
    label: dict = field(default_factory=dict)

    @property
    def win_rate(self) -> float | None:
        valid = [v for v in self.values.values() if v is not None]
        return sum(valid) / len(valid) if valid else None


def read_judge(path: str | Path) -> JudgeFile:
    """A judge result JSON (fusionroute.eval.judge.judge_pairs): per-item verdicts in "items"; its
    "win_rate" (if given) must agree with them."""
    data = _read_json_file(path, "judge result")
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ClaimsInputError(f"{path}: not a judge result (no 'items' list)")
    if not data["items"]:
        raise ClaimsInputError(f"{path}: no judged items")
    values: dict[str, float | None] = {}
    for index, item in enumerate(data["items"]):
        if not isinstance(item, dict) or "id" not in item or "verdict" not in item:
            raise ClaimsInputError(f"{path}: item {index} lacks 'id' or 'verdict'")
        iid, verdict = str(item["id"]), item["verdict"]
        if verdict not in JUDGE_VALUES:
            raise ClaimsInputError(f"{path}: item {iid!r} has verdict {verdict!r} "
                                   f"(one of {sorted(JUDGE_VALUES)} expected)")
        if iid in values:
            raise ClaimsInputError(f"{path}: item id {iid!r} appears twice")
        values[iid] = JUDGE_VALUES[verdict]
    label = data.get("label") if isinstance(data.get("label"), dict) else {}
    result = JudgeFile(str(path), values, label)
    stated = data.get("win_rate")
    if stated is not None and (result.win_rate is None or abs(float(stated) - result.win_rate) > 1e-9):
        raise ClaimsInputError(f"{path}: 'win_rate' {stated} disagrees with its items ({result.win_rate})")
    return result


def _read_json_file(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ClaimsInputError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClaimsInputError(f"{path}: {what} is not valid JSON ({err})") from None


class _Loader:
    """Reads each scores file once."""

    def __init__(self) -> None:
        self._scores: dict[tuple[str, str], ScoreFile] = {}

    def scores(self, path: str | Path, benchmark: str) -> ScoreFile:
        key = (str(path), benchmark)
        if key not in self._scores:
            self._scores[key] = read_scores(path, benchmark)
        return self._scores[key]

    def method(self, files: Mapping[str, str], what: str) -> dict[str, ScoreFile]:
        names = benchmarks()
        missing = [b for b in names if b not in files]
        if missing:
            raise ClaimsInputError(f"{what}: no scores file given for {missing}")
        return {b: self.scores(files[b], b) for b in names}


def macro_average(cells: Mapping[str, ScoreFile]) -> float:
    names = benchmarks()
    return sum(cells[b].score for b in names) / len(names)


# ------------------------------------------------------------------------------------------------
# Matching our rows with the paper's
# ------------------------------------------------------------------------------------------------

def expert_role(name: str) -> str | None:
    low = name.strip().lower()
    for prefix, role in EXPERT_ROLES:
        if low.startswith(prefix):
            return role
    return None


def paper_key(paper_method: str) -> str:
    """The paper's row name -> matching key ("Instruction Expert" and "Instruct Expert" alike)."""
    if paper_method.endswith(" Expert"):
        role = expert_role(paper_method[: -len(" Expert")])
        if role:
            return f"expert:{role}"
    return paper_method


def our_key(name: str, expert: bool) -> str | None:
    """Our catalogue name -> matching key, or None when the paper has no such row."""
    if expert:
        role = expert_role(name)
        return f"expert:{role}" if role else None
    return PAPER_NAMES.get(name)


def reference_family(label: str, paper: Sequence[PaperRow], table: int, path: str = "paper tables") -> tuple[str, bool]:
    """The paper's family for our family label, and whether it is a stand-in (REFERENCE_FAMILY)."""
    families = {r.family for r in paper if r.table == table}
    if label in families:
        return label, False
    if REFERENCE_FAMILY not in families:
        raise ClaimsInputError(f"{path}: no {REFERENCE_FAMILY} rows in table {table} to compare {label!r} with")
    return REFERENCE_FAMILY, True


def _paper_lookup(paper: Sequence[PaperRow], table: int, family: str) -> dict[str, PaperRow]:
    return {r.key: r for r in paper if r.table == table and r.family == family}


# ------------------------------------------------------------------------------------------------
# Side-by-side tables
# ------------------------------------------------------------------------------------------------

@dataclass
class SideBySideRow:
    family: str  # our family label
    group: str
    method: str  # our label
    ours: dict[str, float]
    ours_avg: float
    paper: PaperRow | None
    paper_family: str
    stand_in: bool


def side_by_side_rows(rows: Sequence[Mapping[str, Any]], paper: Sequence[PaperRow], table: int,
                      paper_path: str = "paper tables") -> list[SideBySideRow]:
    """`rows`: [{"family" (label), "group", "method" (label), "name" (catalogue name), "expert",
    "scores": {benchmark: scores.json}}] as the workflow passes them."""
    loader = _Loader()
    out = []
    for spec in rows:
        for key in ("family", "group", "method", "name", "scores"):
            if key not in spec:
                raise ValueError(f"side-by-side row {spec!r} lacks {key!r}")
        cells = loader.method(spec["scores"], f"{spec['family']}/{spec['method']}")
        family, stand_in = reference_family(spec["family"], paper, table, paper_path)
        key = our_key(spec["name"], bool(spec.get("expert")))
        match = _paper_lookup(paper, table, family).get(key) if key else None
        out.append(SideBySideRow(spec["family"], spec["group"], spec["method"],
                                 {b: cells[b].score for b in benchmarks()}, macro_average(cells),
                                 match, family, stand_in))
    return out


def side_by_side_caption(entries: Sequence[SideBySideRow], caption: str, table: int) -> str:
    parts = [caption.rstrip(), f"Each cell: ours | the paper's (its Table {table}); {DASH} where the paper has no such row;"
             " Delta = our average minus the paper's."]
    for label in dict.fromkeys(e.family for e in entries):
        first = next(e for e in entries if e.family == label)
        if first.stand_in:
            parts.append(f"The paper has no {label} block: its {first.paper_family} numbers are shown as the reference.")
    for e in entries:
        p = e.paper
        if p is not None and abs(p.avg - p.mean_of_cells) > 0.005 + 1e-9:
            parts.append(f"The paper's printed average for {p.method} ({p.family}, {p.avg:.3f}) is not the mean of "
                         f"its five cells ({p.mean_of_cells:.3f}); the printed value is shown.")
    return " ".join(part for part in parts if part)


def _pair(ours: float, paper: float | None, digits: int, sep: str, missing: str) -> str:
    return f"{ours:.{digits}f}{sep}{missing if paper is None else f'{paper:.{digits}f}'}"


def _delta(entry: SideBySideRow, missing: str) -> str:
    return missing if entry.paper is None else f"{entry.ours_avg - entry.paper.avg:+.3f}"


def side_by_side_markdown(entries: Sequence[SideBySideRow], caption: str) -> str:
    cols = columns()
    head = ["Family", "Method", *[f"{name} (ours \\| paper)" for _, name in cols], "Avg (ours \\| paper)", "Δ Avg"]
    out = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        paper = e.paper
        cells = [_pair(e.ours[b], paper.scores[b] if paper else None, 2, " \\| ", DASH) for b, _ in cols]
        cells.append(_pair(e.ours_avg, paper.avg if paper else None, 3, " \\| ", DASH))
        out.append("| " + " | ".join([e.family, e.method, *cells, _delta(e, DASH)]) + " |")
    return "\n".join(out) + "\n"


def side_by_side_latex(entries: Sequence[SideBySideRow], caption: str, label: str) -> str:
    cols = columns()
    ncol = len(cols) + 3
    tex_caption = _latex_escape(caption).replace("|", r"$\mid$").replace(DASH, "--")
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex_caption}}}",
             rf"\label{{{label}}}", r"\begin{tabular}{l" + "c" * (ncol - 1) + "}", r"\toprule",
             " & ".join(["Model", *[name for _, name in cols], "Avg.", r"$\Delta$Avg."]) + r" \\",
             " & ".join(["", *[r"ours $\mid$ paper"] * (len(cols) + 1), ""]) + r" \\"]
    for family in dict.fromkeys(e.family for e in entries):
        block = [e for e in entries if e.family == family]
        title = family + (f" (paper: {block[0].paper_family})" if block[0].stand_in else "")
        lines += [r"\midrule", rf"\multicolumn{{{ncol}}}{{c}}{{\textit{{{_latex_escape(title)}}}}} \\"]
        for group in dict.fromkeys(e.group for e in block):
            lines += [r"\midrule", rf"\multicolumn{{{ncol}}}{{l}}{{\textbf{{{_latex_escape(group)}}}}} \\"]
            for e in (x for x in block if x.group == group):
                paper = e.paper
                cells = [_pair(e.ours[b], paper.scores[b] if paper else None, 2, r" $\mid$ ", "--") for b, _ in cols]
                cells.append(_pair(e.ours_avg, paper.avg if paper else None, 3, r" $\mid$ ", "--"))
                lines.append(" & ".join([_latex_escape(e.method), *cells, _delta(e, "--")]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_side_by_side(rows: Sequence[Mapping[str, Any]], paper_csv: str | Path, table: int,
                       tex_path: str | Path, md_path: str | Path, caption: str, label: str) -> None:
    entries = side_by_side_rows(rows, read_paper_tables(paper_csv), int(table), str(paper_csv))
    text = side_by_side_caption(entries, caption, int(table))
    atomic_write_text(md_path, side_by_side_markdown(entries, text))
    atomic_write_text(tex_path, side_by_side_latex(entries, text, label))


# ------------------------------------------------------------------------------------------------
# Paired test of a difference of (macro) averages
# ------------------------------------------------------------------------------------------------

def verdict(difference: float, p_value: float, alpha: float) -> str:
    if p_value < alpha and difference > 0:
        return HOLDS
    if p_value < alpha and difference < 0:
        return DOES_NOT_HOLD
    return CANNOT_TELL


def paired_test(strata: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, alpha: float = 0.05,
                power: float = 0.8, resamples: int = 100_000, seed: int = 0,
                target: float = TARGET_MDD) -> dict[str, Any]:
    """D = mean over strata of mean_i(a_i - b_i) for paired outcomes (a, b) per stratum, with the
    sign-flip permutation p-value, the stratified paired bootstrap CI and the MDD (module doc)."""
    if not strata:
        raise ValueError("no strata to compare")
    if resamples < 1:
        raise ValueError("resamples must be positive")
    rng = np.random.default_rng(seed)
    k = len(strata)
    diff, se0_sq = 0.0, 0.0
    null = np.zeros(resamples)
    boot = np.zeros(resamples)
    per_stratum = {}
    for name, (a, b) in strata.items():
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name}: paired outcomes must be two non-empty vectors of one length")
        d, n = a - b, a.size
        diff += d.mean() / k
        se0_sq += float((d * d).mean()) / n / k**2
        sizes, counts = np.unique(np.abs(d[d != 0]), return_counts=True)
        for size, count in zip(sizes, counts):
            null += size * (2.0 * rng.binomial(count, 0.5, resamples) - count) / (n * k)
        values, counts = np.unique(d, return_counts=True)
        boot += rng.multinomial(n, counts / n, size=resamples) @ values / (n * k)
        per_stratum[name] = {"n": int(n), "a": float(a.mean()), "b": float(b.mean()),
                             "discordant": int(np.count_nonzero(d))}
    exceed = int(np.count_nonzero(np.abs(null) >= abs(diff) - 1e-12))
    p_value = (1 + exceed) / (resamples + 1)
    low, high = (float(x) for x in np.quantile(boot, [0.025, 0.975]))
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    se0 = math.sqrt(se0_sq)
    mdd = z * se0 if se0 > 0 else None
    n_total = sum(s["n"] for s in per_stratum.values())
    return {
        "a": sum(s["a"] for s in per_stratum.values()) / k,
        "b": sum(s["b"] for s in per_stratum.values()) / k,
        "difference": float(diff),
        "ci95": [low, high],
        "p_value": p_value,
        "p_floor": 1 / (resamples + 1),
        "n": n_total,
        "n_per_stratum": {name: s["n"] for name, s in per_stratum.items()},
        "strata": per_stratum,
        "mdd": mdd,
        "n_for_target_mdd": math.ceil(n_total * (mdd / target) ** 2) if mdd else None,
        "verdict": verdict(float(diff), p_value, alpha),
    }


# ------------------------------------------------------------------------------------------------
# Rank correlation
# ------------------------------------------------------------------------------------------------

def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson of average ranks); None when undefined (n < 2 or a constant side)."""
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    if len(x) < 2:
        return None
    rx, ry = np.asarray(average_ranks(x)), np.asarray(average_ranks(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / norm if norm > 0 else None


def spearman_permutation_p(x: Sequence[float], y: Sequence[float], *, resamples: int = 100_000,
                           seed: int = 0) -> tuple[float | None, str]:
    """Two-sided p of rho by permuting y's ranks: exact up to EXACT_PERMUTATIONS_UP_TO values."""
    rho = spearman(x, y)
    if rho is None:
        return None, "undefined"
    rx, ry = np.asarray(average_ranks(x)), np.asarray(average_ranks(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    n = len(x)
    if n <= EXACT_PERMUTATIONS_UP_TO:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.int16)
        rhos = ry[perms] @ rx / norm
        return float(np.count_nonzero(np.abs(rhos) >= abs(rho) - 1e-12) / len(perms)), "exact"
    rng = np.random.default_rng(seed)
    rhos = np.array([ry[rng.permutation(n)] @ rx for _ in range(resamples)]) / norm
    return (1 + int(np.count_nonzero(np.abs(rhos) >= abs(rho) - 1e-12))) / (resamples + 1), "monte carlo"


def rank_correlation(ours: Mapping[str, float], paper: Mapping[str, float], labels: Mapping[str, str] | None = None,
                     *, seed: int = 0, resamples: int = 100_000) -> dict[str, Any]:
    """Spearman between our averages and the paper's over the methods both have (keys shared)."""
    names = [m for m in ours if m in paper]
    x, y = [ours[m] for m in names], [paper[m] for m in names]
    rho = spearman(x, y)
    p, how = spearman_permutation_p(x, y, seed=seed, resamples=resamples) if rho is not None else (None, "undefined")
    rx, ry = (average_ranks(x), average_ranks(y)) if names else ([], [])
    return {"rho": rho, "n": len(names), "p_value": p, "p_method": how,
            "methods": [{"method": (labels or {}).get(m, m), "ours": ours[m], "paper": paper[m],
                         "our_rank": len(names) + 1 - rx[i], "paper_rank": len(names) + 1 - ry[i]}
                        for i, m in enumerate(names)]}


# ------------------------------------------------------------------------------------------------
# Claims
# ------------------------------------------------------------------------------------------------

def _shared_ids(a: ScoreFile, b: ScoreFile) -> list[str]:
    """The paired items: all when both were scored on the same ids, the smaller side's when one is
    a subset of the other (Collab's limit), else an error naming both files."""
    ia, ib = set(a.outcomes), set(b.outcomes)
    if ia == ib or ib < ia:
        return [i for i in a.outcomes if i in ib]
    if ia < ib:
        return list(a.outcomes)
    raise ClaimsInputError(f"{a.path} and {b.path} were scored on different items "
                           f"({len(ia & ib)} shared, {len(ia - ib)} only in the first, {len(ib - ia)} only in the second)")


def accuracy_claim(claim: str, a: Mapping[str, ScoreFile], b: Mapping[str, ScoreFile], **test: Any) -> dict[str, Any]:
    strata, subsets = {}, {}
    for bench in benchmarks():
        ids = _shared_ids(a[bench], b[bench])
        if len(ids) != max(len(a[bench].outcomes), len(b[bench].outcomes)):
            subsets[bench] = f"{len(ids)} of {max(len(a[bench].outcomes), len(b[bench].outcomes))}"
        strata[bench] = ([a[bench].outcomes[i] for i in ids], [b[bench].outcomes[i] for i in ids])
    result = paired_test(strata, **test)
    notes = []
    if subsets:
        where = ", ".join(f"{bench} {count}" for bench, count in subsets.items())
        notes.append(f"paired on the items both sides were scored on ({where}); the averages shown are over "
                     "those items, not the tables' cells")
    partial = [c.path for side in (a, b) for c in side.values() if c.partial]
    if partial:
        notes.append("partial scores file(s): " + ", ".join(partial))
    return {"claim": claim, "kind": "accuracy", **result, "notes": notes}


def judge_claim(claim: str, a: JudgeFile, b: JudgeFile, **test: Any) -> dict[str, Any]:
    if set(a.values) != set(b.values):
        raise ClaimsInputError(f"{a.path} and {b.path} judged different items "
                               f"({len(set(a.values) ^ set(b.values))} not shared)")
    against = {side.label.get("b") for side in (a, b) if side.label.get("b")}
    if len(against) > 1:
        raise ClaimsInputError(f"{a.path} and {b.path} were judged against different models: {sorted(against)}")
    ids = [i for i in a.values if a.values[i] is not None and b.values[i] is not None]
    if not ids:
        raise ClaimsInputError(f"{a.path}, {b.path}: no item has a valid verdict on both sides")
    result = paired_test({"general": ([a.values[i] for i in ids], [b.values[i] for i in ids])}, **test)
    excluded = len(a.values) - len(ids)
    notes = [f"{excluded} item(s) with a malformed verdict on either side excluded"] if excluded else []
    return {"claim": claim, "kind": "judge", **result, "notes": notes}


def every_expert_claim(claim: str, rows: Sequence[dict], alpha: float) -> dict[str, Any]:
    if all(r["verdict"] == HOLDS for r in rows):
        outcome = HOLDS
    elif any(r["difference"] < 0 and r["p_value"] < alpha / len(rows) for r in rows):
        outcome = DOES_NOT_HOLD
    else:
        outcome = CANNOT_TELL
    return {"claim": claim, "kind": "compound", "verdict": outcome, "notes": [
        f"holds if every expert row holds; does not hold if an expert is significantly above at alpha/{len(rows)}"]}


def family_claims(spec: Mapping[str, Any], paper: Sequence[PaperRow], table1: Sequence[str], *,
                  paper_path: str = "paper tables", alpha: float = 0.05, power: float = 0.8,
                  resamples: int = 100_000, seed: int = 0, loader: _Loader | None = None) -> dict[str, Any]:
    """One family's claims. `spec`: {"label", "experts": [names], "labels": {name: label},
    "scores": {name: {benchmark: scores.json}}, "judge": {"cdpo": json, "sft": json},
    "against": label of the judge's comparison model}."""
    loader = loader or _Loader()
    labels = spec.get("labels", {})
    label = lambda name: labels.get(name, name)  # noqa: E731
    scores = spec["scores"]

    def cells(name: str) -> dict[str, ScoreFile]:
        if name not in scores:
            raise ValueError(f"{spec['label']}: no scores files given for {name!r}")
        return loader.method(scores[name], f"{spec['label']}/{name}")

    test = {"alpha": alpha, "power": power, "resamples": resamples, "seed": seed}
    ours = cells("fusionroute")
    fr = label("fusionroute")
    rows: list[dict] = []
    expert_rows = [accuracy_claim(f"{fr} above {label(e)} (Table 1 average)", ours, cells(e), **test)
                   for e in spec["experts"]]
    rows += expert_rows
    if expert_rows:
        rows.append(every_expert_claim(f"{fr} above every expert (Table 1 average)", expert_rows, alpha))
    for other in ("finetuned", "sequence_selection", "collab"):
        rows.append(accuracy_claim(f"{fr} above {label(other)} (Table 1 average)", ours, cells(other), **test))
    rows.append(accuracy_claim(f"{fr} above routing only, {label('fusionroute_routing_only')} (Table 2 average)",
                               ours, cells("fusionroute_routing_only"), **test))
    against = spec.get("against", "the fine-tuned model")
    rows.append(judge_claim(f"CDPO above SFT only: {fr} above {label('fusionroute_sft')} in judge win rate "
                            f"against {against} (Figure 4)",
                            read_judge(spec["judge"]["cdpo"]), read_judge(spec["judge"]["sft"]), **test))
    family, stand_in = reference_family(spec["label"], paper, 1, paper_path)
    lookup = _paper_lookup(paper, 1, family)
    experts = set(spec["experts"])
    our_avgs, paper_avgs = {}, {}
    for name in table1:
        key = our_key(name, name in experts)
        if key and key in lookup:
            our_avgs[name] = macro_average(cells(name))
            paper_avgs[name] = lookup[key].avg
    ranks = rank_correlation(our_avgs, paper_avgs, labels, seed=seed, resamples=resamples)
    return {"label": spec["label"], "paper_family": family, "stand_in": stand_in, "claims": rows,
            "rank_correlation": ranks}


def build_claims(families: Mapping[str, Mapping[str, Any]], paper_csv: str | Path, table1: Sequence[str], *,
                 world: str = "", alpha: float = 0.05, power: float = 0.8, resamples: int = 100_000,
                 seed: int = 0) -> dict[str, Any]:
    paper = read_paper_tables(paper_csv)
    loader = _Loader()
    out = {family: family_claims(spec, paper, table1, paper_path=str(paper_csv), alpha=alpha, power=power,
                                 resamples=resamples, seed=seed, loader=loader)
           for family, spec in families.items()}
    return {"world": world, "alpha": alpha, "power": power, "resamples": resamples, "seed": seed,
            "target_mdd": TARGET_MDD, "paper": str(paper_csv), "families": out}


def _p_text(row: dict) -> str:
    if row["p_value"] <= row["p_floor"] + 1e-15:
        return f"<{row['p_floor'] * 1.0001:.1g}"
    return f"{row['p_value']:.3g}"


def claims_markdown(result: Mapping[str, Any]) -> str:
    alpha, power = result["alpha"], result["power"]
    world = f" ({result['world']} world)" if result.get("world") else ""
    lines = [f"# The paper's claims on our data{world}", "",
             f"Each claim compares FusionRoute with another method on the same items. Average = mean of the five "
             f"benchmarks' accuracies (Table 1's Avg). Difference with a 95% paired bootstrap interval (items "
             f"resampled within each benchmark); p: two-sided paired sign-flip permutation test stratified by "
             f"benchmark ({result['resamples']:,} seeded draws, seed {result['seed']}). Verdict: holds = difference "
             f"> 0 with p < {alpha}; does not hold = difference < 0 with p < {alpha}; else cannot tell. "
             f"MDD = minimum detectable difference at {power:.0%} power and alpha {alpha} (normal approximation at "
             f"the observed discordance); n for MDD {TARGET_MDD} = the items needed, in the same proportions, to tell "
             f"a {TARGET_MDD * 100:.0f}-point difference. The judge claim (Figure 4) compares per-item win values "
             f"(win 1, tie 0.5, loss 0) against the fine-tuned model.", ""]
    for fam in result["families"].values():
        ref = f"paper reference: {fam['paper_family']}" + (
            f", standing in: the paper has no {fam['label']} block" if fam["stand_in"] else "")
        lines += [f"## {fam['label']} ({ref})", "",
                  "| Claim | Ours (A / B) | A − B [95% CI] | p | n | MDD (80% power) | n for MDD 0.05 | Verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        notes = []
        for row in fam["claims"]:
            if row["kind"] == "compound":
                lines.append(f"| {row['claim']} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | **{row['verdict']}** |")
            else:
                low, high = row["ci95"]
                n_text = f"{row['n']}" + (" (" + "/".join(str(v) for v in row["n_per_stratum"].values()) + ")"
                                          if len(row["n_per_stratum"]) > 1 else "")
                mdd = DASH if row["mdd"] is None else f"{row['mdd']:.3f}"
                need = DASH if row["n_for_target_mdd"] is None else f"{row['n_for_target_mdd']:,}"
                lines.append(f"| {row['claim']} | {row['a']:.3f} / {row['b']:.3f} | {row['difference']:+.3f} "
                             f"[{low:+.3f}, {high:+.3f}] | {_p_text(row)} | {n_text} | {mdd} | {need} | **{row['verdict']}** |")
            notes += [f"{row['claim']}: {note}" for note in row["notes"]]
        rc = fam["rank_correlation"]
        lines.append("")
        if rc["rho"] is None:
            lines.append(f"Rank correlation with the paper's Table 1 ({fam['paper_family']}): undefined "
                         f"({rc['n']} shared methods, or constant averages).")
        else:
            lines.append(f"Rank correlation of the Table 1 averages with the paper's ({fam['paper_family']}): "
                         f"Spearman rho = {rc['rho']:+.3f} over {rc['n']} methods, two-sided permutation "
                         f"p = {rc['p_value']:.3g} ({rc['p_method']}).")
        if rc["methods"]:
            lines += ["", "| Method | Ours avg | Paper avg | Our rank | Paper rank |", "|---|---|---|---|---|"]
            lines += [f"| {m['method']} | {m['ours']:.3f} | {m['paper']:.3f} | {m['our_rank']:g} | {m['paper_rank']:g} |"
                      for m in rc["methods"]]
        if notes:
            lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
        lines.append("")
    return "\n".join(lines)


def write_claims(families: Mapping[str, Mapping[str, Any]], paper_csv: str | Path, md_path: str | Path,
                 json_path: str | Path, table1: Sequence[str], **kwargs: Any) -> dict[str, Any]:
    result = build_claims(families, paper_csv, table1, **kwargs)
    write_json(json_path, result)
    atomic_write_text(md_path, claims_markdown(result))
    return result

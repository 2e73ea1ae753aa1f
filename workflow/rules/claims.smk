# The paper beside the reproduction: Tables 1 and 2 side by side with the paper's numbers ("ours |
# paper" per cell) and the claims table (the paper's qualitative claims tested on our items).
# Library: fusionroute/eval/claims.py (its docstring states the tests); steps `side_by_side` and
# `claims` in fusionroute/steps/claims.py. Include after report.smk and judge.smk (uses TABLES,
# score_file, table_inputs, collab_caption, judge_file, AGAINST).
#
# Targets (all under results/<world>/):
#   table1_vs_paper.md / .tex, table2_vs_paper.md / .tex   (rules table1_vs_paper, table2_vs_paper)
#   claims.md / claims.json                                 (rule claims; needs the Figure 4 judge results)
#   rule paper_comparison builds all three.
PAPER_TABLES = "results/reference/paper_tables.csv"
# FusionRoute is compared with these (plus the family's experts); Figure 4's pair comes from the judge.
CLAIM_METHODS = ["fusionroute", "finetuned", "sequence_selection", "collab", "fusionroute_routing_only"]
CLAIMS_TEST = {"alpha": 0.05, "power": 0.8, "resamples": 100000}

# Instant jobs that only read scores and judge results.
localrules: table1_vs_paper, table2_vs_paper, claims, paper_comparison


def paper_rows(methods):
    """table_rows plus what the paper's rows are matched by: the catalogue name and whether it is an expert."""
    rows = []
    for family in FAMILIES:
        for name in methods:
            spec = method(family, name)
            rows.append({"family": FAMILIES[family]["label"], "group": spec["group"], "method": spec["label"],
                         "name": name, "expert": name in experts(family),
                         "scores": {b: score_file(family, name, b) for b in BENCHMARKS}})
    return rows


def claims_families():
    """Per family: the experts, labels, score files of every compared method (and of Table 1's rows,
    for the rank correlation) and the two Figure 4 judge results."""
    out = {}
    for family in FAMILIES:
        names = list(dict.fromkeys(TABLES["table1"] + experts(family) + CLAIM_METHODS))
        out[family] = {
            "label": FAMILIES[family]["label"],
            "experts": experts(family),
            "labels": {m: method(family, m)["label"] for m in names + ["fusionroute_sft"]},
            "scores": {m: {b: score_file(family, m, b) for b in BENCHMARKS} for m in names},
            "judge": {"cdpo": judge_file(family, "fusionroute"), "sft": judge_file(family, "fusionroute_sft")},
            "against": "the " + method(family, AGAINST)["label"],
        }
    return out


CLAIMS_FAMILIES = claims_families()


def claims_inputs():
    files = []
    for spec in CLAIMS_FAMILIES.values():
        files += [path for cells in spec["scores"].values() for path in cells.values()]
        files += list(spec["judge"].values())
    return list(dict.fromkeys(files))


rule table1_vs_paper:
    input:
        table_inputs(TABLES["table1"]),
        paper=PAPER_TABLES,
    output:
        tex=f"{RESULTS}/table1_vs_paper.tex",
        md=f"{RESULTS}/table1_vs_paper.md",
    params:
        step="side_by_side",
        rows=paper_rows(TABLES["table1"]),
        table=1,
        caption=f"Table 1 beside the paper's ({WORLD} world)." + (collab_caption() if "collab" in TABLES["table1"] else ""),
        label="tab:main-vs-paper",
    log:
        f"logs/{WORLD}/table1_vs_paper.log",
    script:
        "../scripts/step.py"


rule table2_vs_paper:
    input:
        table_inputs(TABLES["table2"]),
        paper=PAPER_TABLES,
    output:
        tex=f"{RESULTS}/table2_vs_paper.tex",
        md=f"{RESULTS}/table2_vs_paper.md",
    params:
        step="side_by_side",
        rows=paper_rows(TABLES["table2"]),
        table=2,
        caption=f"Table 2 (ablation) beside the paper's ({WORLD} world)." + (collab_caption() if "collab" in TABLES["table2"] else ""),
        label="tab:ablation-vs-paper",
    log:
        f"logs/{WORLD}/table2_vs_paper.log",
    script:
        "../scripts/step.py"


rule claims:
    input:
        claims_inputs(),
        paper=PAPER_TABLES,
    output:
        md=f"{RESULTS}/claims.md",
        json=f"{RESULTS}/claims.json",
    params:
        step="claims",
        families=CLAIMS_FAMILIES,
        table1=TABLES["table1"],
        world=WORLD,
        seed=SEED,
        **CLAIMS_TEST,
    log:
        f"logs/{WORLD}/claims.log",
    script:
        "../scripts/step.py"


rule paper_comparison:
    input:
        f"{RESULTS}/table1_vs_paper.md",
        f"{RESULTS}/table2_vs_paper.md",
        f"{RESULTS}/claims.md",

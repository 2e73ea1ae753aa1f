# Tables and summaries: they read scores.json (and generations.jsonl for costs/routing) only.
TABLES = config["tables"]


def score_file(family, method_name, benchmark):
    return f"{RESULTS}/{family}/{method_name}/{benchmark}/scores.json"


def generation_file(family, method_name, benchmark):
    return f"{RESULTS}/{family}/{method_name}/{benchmark}/generations.jsonl"


def table_rows(methods, with_cost=False):
    rows = []
    for family in FAMILIES:
        for name in methods:
            spec = method(family, name)
            row = {"family": FAMILIES[family]["label"], "group": spec["group"], "method": spec["label"],
                   "scores": {b: score_file(family, name, b) for b in BENCHMARKS}}
            if with_cost and spec["kind"] in ("fusionroute", "collab", "sequence_selection"):
                row["forwards"] = [generation_file(family, name, b) for b in BENCHMARKS]
            rows.append(row)
    return rows


def table_inputs(methods, with_cost=False):
    files = []
    for row in table_rows(methods, with_cost):
        files += list(row["scores"].values()) + row.get("forwards", [])
    return files


def collab_caption():
    limits = {b: collab_limit(b) for b in BENCHMARKS}
    if not any(limits.values()):
        return ""
    return " Collab is evaluated on the first " + ", ".join(f"{n} {b}" for b, n in limits.items() if n) + " samples because of its cost."


rule table1:
    input:
        table_inputs(TABLES["table1"], with_cost=True),
    output:
        tex="results/table1.tex",
        md="results/table1.md",
    params:
        step="table",
        rows=table_rows(TABLES["table1"], with_cost=True),
        caption=f"Performance across domains ({WORLD} world). Best per family in bold." + (collab_caption() if "collab" in TABLES["table1"] else ""),
        label="tab:main",
    log:
        f"logs/{WORLD}/table1.log",
    script:
        "../scripts/step.py"


rule table2:
    input:
        table_inputs(TABLES["table2"]),
    output:
        tex="results/table2.tex",
        md="results/table2.md",
    params:
        step="table",
        rows=table_rows(TABLES["table2"]),
        caption=f"Ablation: routing only vs FusionRoute with complementary logits ({WORLD} world).",
        label="tab:ablation",
    log:
        f"logs/{WORLD}/table2.log",
    script:
        "../scripts/step.py"


ROUTED = [m for m in dict.fromkeys(TABLES["table1"] + TABLES["table2"]) if m.startswith("fusionroute")]


rule routing_summary:
    input:
        **{f"{m}__{b}": generation_file(f, m, b) for f in FAMILIES for m in ROUTED for b in BENCHMARKS},
    output:
        json=f"{RESULTS}/routing_summary.json",
        md=f"{RESULTS}/routing_summary.md",
    params:
        expert_names=experts(list(FAMILIES)[0]),
    log:
        f"logs/{WORLD}/routing_summary.log",
    script:
        "../scripts/step.py"

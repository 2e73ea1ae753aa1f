# Tables and summaries: they read scores.json (and generations.jsonl for costs/routing) only.
import shutil


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
        tex=f"{RESULTS}/table1.tex",
        md=f"{RESULTS}/table1.md",
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
        tex=f"{RESULTS}/table2.tex",
        md=f"{RESULTS}/table2.md",
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


# Each world keeps its tables and figures in results/<world>/; results/table1.tex (the README's
# target) and its siblings are copies of the world this run builds. `world` is a param so that
# switching worlds recopies even when the other world's files are older.
rule publish_table:
    input:
        tex=f"{RESULTS}/{{name}}.tex",
        md=f"{RESULTS}/{{name}}.md",
    output:
        tex="results/{name}.tex",
        md="results/{name}.md",
    wildcard_constraints:
        name="table1|table2",
    params:
        world=WORLD,
    localrule: True
    run:
        for key in ("tex", "md"):
            shutil.copyfile(input[key], output[key])


rule publish_figure:
    input:
        pdf=f"{RESULTS}/{{name}}.pdf",
        png=f"{RESULTS}/{{name}}.png",
    output:
        pdf="results/{name}.pdf",
        png="results/{name}.png",
    wildcard_constraints:
        name="fig3|fig4",
    params:
        world=WORLD,
    localrule: True
    run:
        for key in ("pdf", "png"):
            shutil.copyfile(input[key], output[key])

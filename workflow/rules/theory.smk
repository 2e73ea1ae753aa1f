# Section 4 testbed (fusionroute.theory): token-level MDPs with exact values, Theorem 4.3's
# Appendix A construction with every routing rule evaluated on it, and a learned routing-only vs
# FusionRoute comparison (the project's SFT loss and Eq. 1 decoding on a tiny tabular router).
# Independent of the world config and of every other rule: CPU only, about a minute on 2 cores.
# The settings are fusionroute.theory.report.ReportConfig fields (its defaults, spelled out here so
# that changing one reruns the rule).
THEORY_DIR = "results/theory"
THEORY_SETTINGS = {
    "appendix_cases": [[2, 4], [2, 6], [2, 8], [2, 10], [3, 4], [3, 6], [3, 8], [4, 4], [4, 6]],
    "epsilon": 0.125,  # dyadic, so the construction's values are exact in floating point
    "delta": 0.25,
    "family_margin": 2.0,
    "seeds": [0, 1, 2],
    "horizons": [2, 4, 6, 8],
    "uncovered": [0.0, 0.1, 0.25, 0.5, 1.0],
    "margins": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
    "margin_horizon": 6,
    "margin_uncovered": 0.25,
    "n_prompts": 16,
    "vocab_size": 4,
    "n_experts": 3,
    "expert_margin": 2.0,
    "train": {"steps": 100, "batch_size": 16, "lr": 0.02, "dim": 16, "seed": 0},
}


rule theory:
    output:
        table_md=f"{THEORY_DIR}/theory.md",
        appendix_a_csv=f"{THEORY_DIR}/appendix_a.csv",
        learned_csv=f"{THEORY_DIR}/learned.csv",
        figure_png=f"{THEORY_DIR}/theory.png",
        figure_pdf=f"{THEORY_DIR}/theory.pdf",
        summary=f"{THEORY_DIR}/summary.json",
    params:
        settings=THEORY_SETTINGS,
    threads: 1  # a tiny model: more threads only add contention
    log:
        "logs/theory/theory.log",
    benchmark:
        "benchmarks/theory/theory.tsv"
    script:
        "../scripts/theory.py"

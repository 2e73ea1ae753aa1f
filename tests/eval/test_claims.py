"""The paper beside the reproduction: side-by-side tables and the claims table (fusionroute.eval.claims)."""
import json
import math

import pytest

from fusionroute.eval.claims import (
    CANNOT_TELL, DOES_NOT_HOLD, HOLDS, ClaimsInputError, average_ranks, build_claims, claims_markdown,
    paired_test, read_judge, read_paper_tables, read_scores, spearman, spearman_permutation_p, write_claims,
    write_side_by_side,
)
from fusionroute.eval.compare import mcnemar_exact

BENCHMARKS = ("gsm8k", "math500", "mbpp", "humaneval", "ifeval")
N = 40  # items per benchmark
HEADER = "table,family,group,method,gsm8k,math500,mbpp,humaneval,ifeval,avg\n"
PAPER = HEADER + (
    "1,Llama-3,Expert Models,Math Expert,0.86,0.36,0.23,0.37,0.31,0.426\n"
    "1,Llama-3,Expert Models,Code Expert,0.52,0.15,0.34,0.66,0.48,0.430\n"
    "1,Llama-3,Expert Models,Instruct Expert,0.74,0.27,0.36,0.52,0.67,0.512\n"
    "1,Llama-3,Collaboration Approaches,Sequence Selection,0.76,0.31,0.21,0.45,0.50,0.466\n"
    "1,Llama-3,Collaboration Approaches,Collab,0.82,0.32,0.28,0.54,0.55,0.502\n"
    "1,Llama-3,Collaboration Approaches,Fine-tuned Model,0.75,0.26,0.36,0.58,0.72,0.536\n"
    "1,Llama-3,Ours,FusionRoute,0.82,0.33,0.36,0.63,0.69,0.566\n"
    "1,Gemma-2,Expert Models,Instruction Expert,0.19,0.08,0.23,0.34,0.61,0.290\n"
    "1,Gemma-2,Ours,FusionRoute,0.65,0.22,0.25,0.40,0.61,0.426\n"
    "2,Llama-3,Ablation,Collab,0.82,0.32,0.28,0.54,0.55,0.502\n"
    "2,Llama-3,Ablation,FusionRoute w/o complementary logits,0.82,0.32,0.26,0.56,0.65,0.522\n"
    "2,Llama-3,Ablation,FusionRoute,0.82,0.33,0.36,0.63,0.69,0.566\n"
)


def write_scores(path, benchmark, correct, n=N):
    """scores.json as fusionroute.eval.scoring writes it: items b-0 .. b-(n-1), `correct` = the
    set of correct indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = [{"id": f"{benchmark}-{i}", "correct": i in correct} for i in range(n)]
    path.write_text(json.dumps({"benchmark": benchmark, "metric": "accuracy", "n": n,
                                "score": sum(s["correct"] for s in samples) / n, "samples": samples}))
    return str(path)


def method_files(root, name, correct, n=N):
    return {b: write_scores(root / name / b / "scores.json", b, correct, n) for b in BENCHMARKS}


def write_judge(path, verdicts, against="finetuned"):
    items = [{"id": f"g-{i}", "verdict": v} for i, v in enumerate(verdicts)]
    valid = [v for v in verdicts if v != "malformed"]
    win_rate = sum({"win": 1, "tie": 0.5, "loss": 0}[v] for v in valid) / len(valid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"win_rate": win_rate, "items": items,
                                "label": {"a": path.stem, "b": against, "family": "tiny"}}))
    return str(path)


@pytest.fixture
def paper_csv(tmp_path):
    path = tmp_path / "paper_tables.csv"
    path.write_text(PAPER)
    return str(path)


@pytest.fixture
def family(tmp_path):
    """One family's inputs: FusionRoute right on items 0..31 of every benchmark (0.8)."""
    root = tmp_path / "results"
    scores = {
        "fusionroute": method_files(root, "fusionroute", set(range(32))),
        "math": method_files(root, "math", set(range(8))),                 # far below: holds
        "code": method_files(root, "code", set(range(1, 33))),             # 1 item each way per benchmark
        "finetuned": method_files(root, "finetuned", set(range(N))),       # above on 8 items each: does not hold
        "sequence_selection": method_files(root, "sequence_selection", set(range(20))),
        "collab": method_files(root, "collab", set(range(10)), n=10),      # decoded on the first 10 items only
        "fusionroute_routing_only": method_files(root, "fusionroute_routing_only", set(range(24))),
    }
    cdpo = ["win"] * 20 + ["tie"] * 5 + ["loss"] * 4 + ["malformed"]
    sft = ["loss"] * 20 + ["tie"] * 5 + ["win"] * 4 + ["tie"]
    judge = {"cdpo": write_judge(root / "judge" / "fusionroute_vs_finetuned.json", cdpo),
             "sft": write_judge(root / "judge" / "fusionroute_sft_vs_finetuned.json", sft)}
    labels = {"fusionroute": "FusionRoute", "math": "Math Expert", "code": "Code Expert", "finetuned": "Fine-tuned Model",
              "sequence_selection": "Sequence Selection", "collab": "Collab",
              "fusionroute_routing_only": "FusionRoute w/o complementary logits", "fusionroute_sft": "FusionRoute (SFT only)"}
    return {"label": "Tiny-Llama", "experts": ["math", "code"], "labels": labels, "scores": scores, "judge": judge,
            "against": "the Fine-tuned Model"}


TABLE1 = ["math", "code", "sequence_selection", "collab", "finetuned", "fusionroute"]


def by_claim(result):
    return {row["claim"]: row for row in result["families"]["tiny"]["claims"]}


def test_claims_hold_do_not_hold_and_cannot_tell(family, paper_csv, tmp_path):
    md, js = tmp_path / "out" / "claims.md", tmp_path / "out" / "claims.json"
    result = write_claims({"tiny": family}, paper_csv, md, js, TABLE1, world="tiny", resamples=20_000, seed=3)
    rows = by_claim(result)
    math_row = rows["FusionRoute above Math Expert (Table 1 average)"]
    assert math_row["verdict"] == HOLDS
    assert math_row["difference"] == pytest.approx(0.6) and math_row["a"] == pytest.approx(0.8)
    assert math_row["n"] == 5 * N and math_row["n_per_stratum"] == {b: N for b in BENCHMARKS}
    assert math_row["p_value"] < 1e-4 and math_row["ci95"][0] > 0.4
    code_row = rows["FusionRoute above Code Expert (Table 1 average)"]
    assert code_row["verdict"] == CANNOT_TELL and code_row["difference"] == pytest.approx(0.0)
    assert code_row["p_value"] > 0.5
    # 10 discordant of 200 items: SE0 = (1/5) sqrt(5 * (2/40) / 40), MDD = (z.975 + z.80) SE0
    se0 = math.sqrt(5 * (2 / 40) / 40) / 5
    assert code_row["mdd"] == pytest.approx((1.959964 + 0.841621) * se0, rel=1e-5)
    assert code_row["n_for_target_mdd"] == math.ceil(200 * (code_row["mdd"] / 0.05) ** 2)
    assert rows["FusionRoute above every expert (Table 1 average)"]["verdict"] == CANNOT_TELL
    tuned = rows["FusionRoute above Fine-tuned Model (Table 1 average)"]
    assert tuned["verdict"] == DOES_NOT_HOLD and tuned["difference"] == pytest.approx(-0.2)
    assert tuned["ci95"][1] < 0
    assert rows["FusionRoute above Sequence Selection (Table 1 average)"]["verdict"] == HOLDS
    assert rows["FusionRoute above routing only, FusionRoute w/o complementary logits (Table 2 average)"]["verdict"] == HOLDS
    collab = rows["FusionRoute above Collab (Table 1 average)"]  # paired on Collab's 10 items per benchmark
    assert collab["n"] == 50 and collab["verdict"] == CANNOT_TELL and collab["mdd"] is None
    assert "gsm8k 10 of 40, math500 10 of 40," in collab["notes"][0]
    judge = next(r for r in result["families"]["tiny"]["claims"] if r["kind"] == "judge")
    # 29 valid items: CDPO 20 W, 5 T, 4 L; SFT 4 W, 5 T, 20 L (the malformed item dropped)
    assert judge["n"] == 29 and judge["verdict"] == HOLDS
    assert judge["a"] == pytest.approx(22.5 / 29) and judge["b"] == pytest.approx(6.5 / 29)
    assert "1 item(s) with a malformed verdict" in judge["notes"][0]
    # rank correlation over the 6 methods both tables have, against the paper's Llama-3 averages
    rc = result["families"]["tiny"]["rank_correlation"]
    assert result["families"]["tiny"]["paper_family"] == "Llama-3" and result["families"]["tiny"]["stand_in"]
    assert rc["n"] == 6
    ours = [0.2, 0.8, 0.5, 1.0, 1.0, 0.8]  # Table 1 averages; Collab's cells are 10/10 on every benchmark
    paper = [0.426, 0.430, 0.466, 0.502, 0.536, 0.566]
    assert rc["rho"] == pytest.approx(spearman(ours, paper))
    text = md.read_text()
    assert "| FusionRoute above Math Expert (Table 1 average) | 0.800 / 0.200 | +0.600 [" in text
    assert "**does not hold**" in text and "**cannot tell**" in text and "**holds**" in text
    assert "200 (40/40/40/40/40)" in text and "(paper reference: Llama-3, standing in: the paper has no Tiny-Llama block)" in text
    assert json.loads(js.read_text())["families"]["tiny"]["claims"][0]["verdict"] == HOLDS
    # seeded: the same inputs give the same file
    again = build_claims({"tiny": family}, paper_csv, TABLE1, world="tiny", resamples=20_000, seed=3)
    assert claims_markdown(again) == text


def test_paired_test_against_mcnemar_and_hand_mdd():
    # one stratum, 0/1 outcomes: the sign-flip test is the exact McNemar test (up to Monte Carlo error)
    a = [1] * 12 + [0] * 3 + [1] * 50 + [0] * 35
    b = [0] * 12 + [1] * 3 + [1] * 50 + [0] * 35
    result = paired_test({"x": (a, b)}, resamples=200_000, seed=1)
    assert result["difference"] == pytest.approx(9 / 100)
    assert result["p_value"] == pytest.approx(mcnemar_exact(12, 3), abs=0.003)
    assert result["verdict"] == HOLDS
    assert result["mdd"] == pytest.approx((1.959964 + 0.841621) * math.sqrt(0.15 / 100), rel=1e-5)
    flipped = paired_test({"x": (b, a)}, resamples=20_000, seed=1)
    assert flipped["verdict"] == DOES_NOT_HOLD and flipped["difference"] == pytest.approx(-0.09)
    same = paired_test({"x": (a, a)}, resamples=1000)
    assert same["p_value"] == 1.0 and same["verdict"] == CANNOT_TELL and same["mdd"] is None


def test_spearman_against_hand_value():
    assert average_ranks([5, 6, 7, 8, 7]) == [1, 2, 3.5, 5, 3.5]
    # ranks x: 1..5, y: 1, 2, 3.5, 5, 3.5 -> sum of products of deviations 8, sums of squares 10 and 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 1]) is None
    p, how = spearman_permutation_p([1, 2, 3, 4], [1, 2, 3, 4])
    assert how == "exact" and p == pytest.approx(2 / 24)  # only the identity and the reversal reach |rho| = 1


def test_side_by_side_formats_ours_beside_the_papers(tmp_path, paper_csv):
    root = tmp_path / "results"
    rows = [
        {"family": "Tiny-Llama", "group": "Expert Models", "method": "Instruct Expert", "name": "instruct", "expert": True,
         "scores": method_files(root, "instruct", set(range(20)))},
        {"family": "Tiny-Llama", "group": "Collaboration Approaches", "method": "Sequence Selection",
         "name": "sequence_selection", "expert": False, "scores": method_files(root, "sequence_selection", set(range(10)))},
        {"family": "Tiny-Llama", "group": "Ours", "method": "FusionRoute", "name": "fusionroute", "expert": False,
         "scores": method_files(root, "fusionroute", set(range(32)))},
        {"family": "Tiny-Llama", "group": "Ablation", "method": "Base", "name": "base", "expert": False,
         "scores": method_files(root, "base", set())},
        {"family": "Gemma-2", "group": "Expert Models", "method": "Instruction Expert", "name": "instruction",
         "expert": True, "scores": method_files(root, "instruction", set(range(4)))},
    ]
    tex, md = tmp_path / "t" / "table1_vs_paper.tex", tmp_path / "t" / "table1_vs_paper.md"
    write_side_by_side(rows, paper_csv, 1, tex, md, "Table 1 beside the paper (tiny world).", "tab:main-vs-paper")
    text = md.read_text()
    assert "| Family | Method | GSM8K (ours \\| paper) |" in text
    assert ("| Tiny-Llama | Instruct Expert | 0.50 \\| 0.74 | 0.50 \\| 0.27 | 0.50 \\| 0.36 | 0.50 \\| 0.52 | "
            "0.50 \\| 0.67 | 0.500 \\| 0.512 | -0.012 |") in text
    assert "| Tiny-Llama | FusionRoute | 0.80 \\| 0.82 |" in text and "| 0.800 \\| 0.566 | +0.234 |" in text
    assert "| Tiny-Llama | Base | 0.00 \\| — | 0.00 \\| — | 0.00 \\| — | 0.00 \\| — | 0.00 \\| — | 0.000 \\| — | — |" in text
    assert "| Gemma-2 | Instruction Expert | 0.10 \\| 0.19 |" in text  # a real family: its own block, "Instruction"
    assert "The paper has no Tiny-Llama block: its Llama-3 numbers are shown" in text
    assert "Gemma-2 block" not in text
    # the paper's own Sequence Selection average (0.466) is not the mean of its cells (0.446): said, not fixed
    assert "printed average for Sequence Selection (Llama-3, 0.466) is not the mean of its five cells (0.446)" in text
    latex = tex.read_text()
    assert r"FusionRoute & 0.80 $\mid$ 0.82 &" in latex and r"Base & 0.00 $\mid$ -- &" in latex
    assert r"\textit{Tiny-Llama (paper: Llama-3)}" in latex and r"\label{tab:main-vs-paper}" in latex
    # Table 2: matched against the paper's Table 2 rows
    write_side_by_side(rows[2:3], paper_csv, 2, tex, md, "Table 2 beside the paper.", "tab:abl")
    assert "| Tiny-Llama | FusionRoute | 0.80 \\| 0.82 | 0.80 \\| 0.33 |" in md.read_text()


def test_missing_and_malformed_inputs_are_errors_naming_the_file(tmp_path, family, paper_csv):
    missing = tmp_path / "results" / "fusionroute" / "gsm8k" / "scores.json"
    missing.unlink()
    with pytest.raises(ClaimsInputError, match=f"{missing}: scores file not found"):
        build_claims({"tiny": family}, paper_csv, TABLE1, resamples=100)
    with pytest.raises(ClaimsInputError, match="nowhere.csv: the paper's tables are not there"):
        read_paper_tables(tmp_path / "nowhere.csv")

    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmark": "gsm8k", "score": 0.5, "samples": [{"id": 1, "correct": "yes"}]}')
    with pytest.raises(ClaimsInputError, match=f"{bad}: sample '1' has 'correct' = 'yes'"):
        read_scores(bad)
    bad.write_text('{"benchmark": "gsm8k", "score": 0.9, "samples": [{"id": 1, "correct": true}, {"id": 2, "correct": false}]}')
    with pytest.raises(ClaimsInputError, match="'score' 0.9 is not the mean"):
        read_scores(bad)
    with pytest.raises(ClaimsInputError, match="scores of 'gsm8k', expected 'mbpp'"):
        read_scores(bad, "mbpp")
    bad.write_text('{"samples": [')
    with pytest.raises(ClaimsInputError, match=f"{bad}: scores file is not valid JSON"):
        read_scores(bad)

    judge = tmp_path / "judge.json"
    judge.write_text(json.dumps({"items": [{"id": "a", "verdict": "maybe"}]}))
    with pytest.raises(ClaimsInputError, match=f"{judge}: item 'a' has verdict 'maybe'"):
        read_judge(judge)
    judge.write_text(json.dumps({"win_rate": 0.9, "items": [{"id": "a", "verdict": "loss"}]}))
    with pytest.raises(ClaimsInputError, match="'win_rate' 0.9 disagrees with its items"):
        read_judge(judge)

    csv_path = tmp_path / "paper_bad.csv"
    csv_path.write_text(HEADER + "1,Llama-3,Ours,FusionRoute,0.82,n/a,0.36,0.63,0.69,0.566\n")
    with pytest.raises(ClaimsInputError, match=f"{csv_path}, line 2: table and scores must be numbers"):
        read_paper_tables(csv_path)
    csv_path.write_text("table,family,method,gsm8k\n1,Llama-3,FusionRoute,0.8\n")
    with pytest.raises(ClaimsInputError, match=r"header lacks the column\(s\) \['group'"):
        read_paper_tables(csv_path)


def test_items_that_are_not_a_subset_are_refused(tmp_path, family, paper_csv):
    # Sequence Selection scored on other ids than FusionRoute (neither a subset of the other): refused
    path = family["scores"]["sequence_selection"]["mbpp"]
    data = json.loads(open(path).read())
    data["samples"][0]["id"] = "other-0"
    open(path, "w").write(json.dumps(data))
    with pytest.raises(ClaimsInputError, match="were scored on different items"):
        build_claims({"tiny": family}, paper_csv, TABLE1, resamples=100)
    # judge files on different items
    other = write_judge(tmp_path / "j" / "other.json", ["win"] * 3)
    family["judge"]["sft"] = other
    family["scores"]["sequence_selection"]["mbpp"] = family["scores"]["fusionroute"]["mbpp"]
    with pytest.raises(ClaimsInputError, match="judged different items"):
        build_claims({"tiny": family}, paper_csv, TABLE1, resamples=100)

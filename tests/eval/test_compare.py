"""Paired comparison of two methods' stored scores (exact McNemar)."""
import json

import pytest

from fusionroute.eval.compare import compare, main, mcnemar_exact


def test_mcnemar_exact_against_hand_values():
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert mcnemar_exact(1, 4) == pytest.approx(2 * 6 / 32)  # 2 * (1 + 5) / 32
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(4, 1) == mcnemar_exact(1, 4)


def _write(folder, benchmark, correct: dict):
    path = folder / benchmark / "scores.json"
    path.parent.mkdir(parents=True)
    samples = [{"id": i, "correct": c} for i, c in correct.items()]
    path.write_text(json.dumps({"benchmark": benchmark, "samples": samples}))


def test_compare_pairs_items_by_id_and_pools(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "gsm8k", {"1": True, "2": True, "3": False, "4": True})
    _write(b, "gsm8k", {"4": False, "3": True, "2": False, "1": True, "9": True})  # id 9: not shared
    _write(a, "ifeval", {"x": False, "y": True})
    _write(b, "ifeval", {"x": False, "y": True})
    _write(a, "mbpp", {"z": True})  # only A has it: not compared
    rows = compare(a, b)
    assert [r.benchmark for r in rows] == ["gsm8k", "ifeval", "pooled"]
    g = rows[0]
    assert (g.n, g.score_a, g.score_b, g.only_a, g.only_b) == (4, 0.75, 0.5, 2, 1)
    assert g.p_value == pytest.approx(1.0)  # 2 * P(X <= 1), X ~ Bin(3, 1/2) = 2 * 4/8
    pooled = rows[-1]
    assert (pooled.n, pooled.only_a, pooled.only_b) == (6, 2, 1)
    assert pooled.score_a == pytest.approx(4 / 6) and pooled.score_b == pytest.approx(3 / 6)
    assert main([str(a), str(b)]) == 0
    assert "| gsm8k | 4 | 0.750 | 0.500 | 2 | 1 |" in capsys.readouterr().out


def test_compare_rejects_missing_or_unrelated_results(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "gsm8k", {"1": True})
    assert main([str(a), str(tmp_path / "nope")]) == 2
    assert "not a method results folder" in capsys.readouterr().err
    _write(b, "ifeval", {"1": True})
    with pytest.raises(ValueError, match="share no scored benchmark"):
        compare(a, b)

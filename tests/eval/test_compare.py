"""Paired comparison of two methods' stored scores (exact McNemar)."""
import json

import pytest

from fusionroute.eval.compare import MismatchError, compare, main, mcnemar_exact


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
    _write(b, "gsm8k", {"4": False, "3": True, "2": False, "1": True})
    _write(a, "ifeval", {"x": False, "y": True})
    _write(b, "ifeval", {"x": False, "y": True})
    rows = compare(a, b)
    assert [r.benchmark for r in rows] == ["gsm8k", "ifeval", "pooled"]
    g = rows[0]
    assert (g.n, g.n_a, g.n_b, g.score_a, g.score_b, g.only_a, g.only_b) == (4, 4, 4, 0.75, 0.5, 2, 1)
    assert g.p_value == pytest.approx(1.0)  # 2 * P(X <= 1), X ~ Bin(3, 1/2) = 2 * 4/8
    # paired Wald CI: d = 1/4, var = (3/4 - 1/16) / 4
    assert g.difference == pytest.approx(0.25)
    half = 1.959964 * ((3 / 4 - 1 / 16) / 4) ** 0.5
    assert g.interval == pytest.approx((0.25 - half, 0.25 + half))
    pooled = rows[-1]
    assert (pooled.n, pooled.only_a, pooled.only_b) == (6, 2, 1)
    assert pooled.score_a == pytest.approx(4 / 6) and pooled.score_b == pytest.approx(3 / 6)
    assert main([str(a), str(b)]) == 0
    assert "| gsm8k | 4 | 4 | 4 | 0.750 | 0.500 | +0.250 [" in capsys.readouterr().out


def test_different_items_are_refused_unless_shared_only(tmp_path, capsys):
    """An intersection compares something else than the tables: refused by default, naming n."""
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "gsm8k", {"1": True, "2": True, "3": False, "4": True})
    _write(b, "gsm8k", {"4": False, "3": True, "2": False, "1": True, "9": True})  # id 9: B only
    with pytest.raises(MismatchError, match="gsm8k: .* scored on 4 items, .* on 5, 4 shared; pass --shared-only"):
        compare(a, b)
    assert main([str(a), str(b)]) == 2 and "--shared-only" in capsys.readouterr().err
    rows = compare(a, b, shared_only=True)
    assert (rows[0].n, rows[0].n_a, rows[0].n_b) == (4, 4, 5)
    assert main([str(a), str(b), "--shared-only"]) == 0
    out = capsys.readouterr().out
    assert "| gsm8k | 4 | 5 | 4 |" in out and "Shared items only" in out
    _write(a, "mbpp", {"z": True})  # a benchmark only A has
    with pytest.raises(MismatchError, match=r"benchmarks differ: only .* has \['mbpp'\]"):
        compare(a, b)
    assert [r.benchmark for r in compare(a, b, shared_only=True)] == ["gsm8k", "pooled"]


def test_compare_rejects_missing_or_unrelated_results(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "gsm8k", {"1": True})
    assert main([str(a), str(tmp_path / "nope")]) == 2
    assert "not a method results folder" in capsys.readouterr().err
    _write(b, "ifeval", {"1": True})
    with pytest.raises(ValueError, match="share no scored benchmark"):
        compare(a, b)

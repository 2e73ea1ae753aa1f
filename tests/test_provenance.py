"""Code provenance: every generated cell records the code it ran; tables mark cells whose code
has changed since, and the CLI prints the command that reruns them."""
from __future__ import annotations

import json

from fusionroute import provenance
from fusionroute.eval.tables import STALE_MARK, Row, to_latex, to_markdown
from fusionroute.io import read_json
from fusionroute.steps import run_step

REAL = ("fusionroute/losses.py", "fusionroute/decoding/decoders.py")


def test_code_version_names_the_imported_package_files():
    import fusionroute.decoding  # noqa: F401
    import fusionroute.losses  # noqa: F401

    version = provenance.code_version()
    assert set(REAL) <= set(version["files"]) and all(f.endswith(".py") for f in version["files"])
    assert not any(f.startswith("tests/") or ".venv" in f for f in version["files"])
    assert len(version["commit"]) in (40, len("unknown")) and version["dirty"] in (True, False, None)
    assert not provenance.is_stale(version)


def test_an_edited_file_makes_the_record_stale(tmp_path):
    (tmp_path / "fusionroute").mkdir()
    loss = tmp_path / "fusionroute" / "losses.py"
    loss.write_text("def loss(x):\n    return x\n")
    record = {"files": ["fusionroute/losses.py"], "code_hash": provenance.files_hash(["fusionroute/losses.py"], tmp_path)}
    assert not provenance.is_stale(record, tmp_path)
    loss.write_text("def loss(x):\n    return 2 * x\n")
    assert provenance.is_stale(record, tmp_path)
    assert not provenance.is_stale(None, tmp_path)  # cells made before provenance: unknown, not marked


def _cell(root, method, benchmark, score, code=None):
    cell = root / "tiny" / method / benchmark
    cell.mkdir(parents=True)
    (cell / "scores.json").write_text(json.dumps({"score": score}))
    (cell / "settings.json").write_text(json.dumps({"kind": "single", **({"code": code} if code else {})}))
    return cell


def test_table_marks_stale_cells_and_cli_offers_the_rerun(tmp_path, capsys):
    current = provenance.code_version(list(REAL))
    old = {**current, "code_hash": "0" * 16}  # what an earlier version of the files hashed to
    benchmarks = ("gsm8k", "math500", "mbpp", "humaneval", "ifeval")
    fresh = {b: _cell(tmp_path, "fusionroute", b, 0.5, current) for b in benchmarks}
    stale = {b: _cell(tmp_path, "collab", b, 0.25, old if b == "mbpp" else current) for b in benchmarks}
    rows = []
    for method, cells in (("FusionRoute", fresh), ("Collab", stale)):
        spec = {"family": "Tiny", "group": "g", "method": method,
                "scores": {b: str(c / "scores.json") for b, c in cells.items()}}
        rows.append(spec)
    out = tmp_path / "table1.tex"
    run_step("table", {}, {"tex": str(out), "md": str(tmp_path / "table1.md")},
             {"rows": rows, "caption": "c", "label": "l"})
    md = (tmp_path / "table1.md").read_text()
    assert f"0.25{STALE_MARK}" in md and md.count(STALE_MARK) == 2  # the cell and the footnote
    assert "Tiny/Collab/mbpp" in md and "python -m fusionroute.provenance" in md
    assert r"$^\dagger$" in out.read_text()

    assert provenance.main([str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert f"--forcerun {stale['mbpp'] / 'generations.jsonl'} --" in printed
    assert str(fresh["gsm8k"]) not in printed


def test_clean_table_is_unchanged():
    rows = [Row("Tiny", "g", "A", {b: 0.5 for b in ("gsm8k", "math500", "mbpp", "humaneval", "ifeval")})]
    assert STALE_MARK not in to_markdown(rows) and "dagger" not in to_latex(rows, "c", "l")


def test_generate_step_records_its_code(tokenizer, tokenizer_dir, tmp_path):
    from model_fixtures import make_llama
    from fusionroute.io import write_jsonl

    make_llama(tokenizer, 1).save_pretrained(tmp_path / "model")
    write_jsonl(tmp_path / "d.jsonl", [{"id": "0", "question": "Tom has 3 apples.", "answer": "#### 3"}])
    params = {"seed": 0, "device": "cpu", "dtype": "float32", "prompt_template": "{instruction}\n", "max_len": 64,
              "benchmark": "gsm8k", "method": "m", "kind": "single", "method_params": {}, "batch_size": 1,
              "max_new_tokens": 2, "limit": 0, "models": {"tokenizer": str(tokenizer_dir), "model": str(tmp_path / "model")}}
    run_step("generate", {"data": str(tmp_path / "d.jsonl")},
             {"generations": str(tmp_path / "g.jsonl"), "settings": str(tmp_path / "settings.json")}, params)
    code = read_json(tmp_path / "settings.json")["code"]
    assert {"fusionroute/decoding/decoders.py", "fusionroute/methods.py",
            "fusionroute/steps/evaluate.py"} <= set(code["files"])
    assert not provenance.is_stale(code)

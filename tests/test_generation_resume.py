"""A generate step resumes only from samples decoded by the same models and settings: a model
retrained between a crash and the rerun starts the cell over (and says so) instead of mixing
old and new outputs."""
from __future__ import annotations

import json

import pytest

from fusionroute.io import read_jsonl, write_jsonl
from fusionroute.methods import SingleModelGenerator
from fusionroute.steps import run_step
from model_fixtures import make_llama


class Crash(Exception):
    pass


def _cell(tmp_path, tokenizer_dir):
    data = tmp_path / "gsm8k.jsonl"
    write_jsonl(data, [{"id": str(i), "question": f"Tom has {i} apples. He buys 2 more. How many?", "answer": "#### 1"}
                       for i in range(6)])
    out = tmp_path / "cell"
    params = {"seed": 0, "device": "cpu", "dtype": "float32", "prompt_template": "### Instruction:\n{instruction}\n\n### Response:\n",
              "max_len": 128, "benchmark": "gsm8k", "method": "model", "kind": "single",
              "models": {"tokenizer": str(tokenizer_dir), "model": str(tmp_path / "model")}, "method_params": {},
              "batch_size": 2, "max_new_tokens": 6, "limit": 0}
    return {"data": str(data)}, {"generations": str(out / "generations.jsonl"), "settings": str(out / "settings.json")}, params


def _save(tokenizer, seed, directory):
    make_llama(tokenizer, seed).save_pretrained(directory)


def _crash_after(monkeypatch, batches: int):
    calls, original = [0], SingleModelGenerator.generate

    def generate(self, prompts, max_new_tokens):
        if calls[0] == batches:
            raise Crash()
        calls[0] += 1
        return original(self, prompts, max_new_tokens)

    monkeypatch.setattr(SingleModelGenerator, "generate", generate)


def test_retrained_model_starts_the_cell_over(tokenizer, tokenizer_dir, tmp_path, monkeypatch, capsys):
    inputs, outputs, params = _cell(tmp_path, tokenizer_dir)
    # reference: model B decoded uninterrupted
    _save(tokenizer, 2, tmp_path / "model")
    run_step("generate", inputs, outputs, params)
    reference = read_jsonl(outputs["generations"])

    # model A crashes after one batch (2 samples in the partial file) ...
    _save(tokenizer, 1, tmp_path / "model")
    with monkeypatch.context() as m:
        _crash_after(m, 1)
        with pytest.raises(Crash):
            run_step("generate", inputs, outputs, params)
    partial = read_jsonl(outputs["generations"] + ".partial")
    assert len(partial) == 3  # header + one batch
    # ... then the model is retrained (B, same path) and the step rerun: nothing of A survives
    _save(tokenizer, 2, tmp_path / "model")
    capsys.readouterr()
    run_step("generate", inputs, outputs, params)
    assert "starting over" in capsys.readouterr().out
    assert read_jsonl(outputs["generations"]) == reference


def test_same_models_resume_without_redoing_finished_samples(tokenizer, tokenizer_dir, tmp_path, monkeypatch, capsys):
    inputs, outputs, params = _cell(tmp_path, tokenizer_dir)
    _save(tokenizer, 1, tmp_path / "model")
    run_step("generate", inputs, outputs, params)
    reference = read_jsonl(outputs["generations"])
    (tmp_path / "cell" / "generations.jsonl").unlink()

    with monkeypatch.context() as m:
        _crash_after(m, 2)
        with pytest.raises(Crash):
            run_step("generate", inputs, outputs, params)
    decoded = []
    original = SingleModelGenerator.generate
    monkeypatch.setattr(SingleModelGenerator, "generate",
                        lambda self, prompts, n: decoded.extend(prompts) or original(self, prompts, n))
    capsys.readouterr()
    run_step("generate", inputs, outputs, params)
    assert "4 finished sample(s) kept" in capsys.readouterr().out
    assert len(decoded) == 2  # only the last batch is decoded again
    assert read_jsonl(outputs["generations"]) == reference
    assert json.loads((tmp_path / "cell" / "settings.json").read_text())["kind"] == "single"

"""The rehearsal hub (fusionroute.rehearsal): every paper hub id as a local, hub-shaped folder.

The default hub is built once per module (~35 s of CPU); determinism (also across the serial and
the two-process build), idempotence and crash safety are checked on a shrunken build (same code,
fewer rows, smaller vocabularies, a few steps).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from fusionroute.data import render_prompt  # noqa: E402
from fusionroute.eval.benchmarks import BENCHMARKS, instruction_for, load_records  # noqa: E402
from fusionroute.hub_data import load_rows, preference_subset, sft_subsets  # noqa: E402
from fusionroute.rehearsal import (  # noqa: E402
    ALPACA,
    GEMMA_EXPERTS,
    GEMMA_INSTRUCT,
    GEMMA_RM,
    LLAMA_EXPERTS,
    LLAMA_INSTRUCT,
    MANIFEST,
    MARKER,
    MISTRAL_RM,
    RehearsalSettings,
    TrainSettings,
    build_rehearsal_hub,
    is_complete,
)
from fusionroute.rehearsal import parts as rehearsal_parts  # noqa: E402

FAMILIES = {"llama3": (LLAMA_INSTRUCT, LLAMA_EXPERTS), "gemma2": (GEMMA_INSTRUCT, GEMMA_EXPERTS)}
POLICIES = [LLAMA_INSTRUCT, *LLAMA_EXPERTS.values(), GEMMA_INSTRUCT, *GEMMA_EXPERTS.values()]
REWARD_MODELS = {MISTRAL_RM: "MistralForSequenceClassification", GEMMA_RM: "GemmaForSequenceClassification"}
DATASETS = {  # benchmark name -> (hub id, config, split) exactly as fusionroute.eval.benchmarks calls them
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "mbpp": ("google-research-datasets/mbpp", "full", "test"),
    "ifeval": ("google/IFEval", None, "train"),
    "humaneval": ("openai/openai_humaneval", None, "test"),
}
SMALL = RehearsalSettings(
    llama_regular_vocab=400, gemma_vocab=420, mistral_rm_vocab=380, gemma_rm_vocab=360,
    llama_instruct_sft=TrainSettings(steps=2, batch_size=4, lr=1e-2, loss_on_prompt=True),
    gemma_instruct_sft=TrainSettings(steps=2, batch_size=4, lr=1e-2, loss_on_prompt=True),
    expert_sft=TrainSettings(steps=2, batch_size=4, lr=1e-3), reward=TrainSettings(steps=1, batch_size=2, lr=1e-3),
    instruct_items_per_domain=12, expert_items=12, rm_pairs=6, perfectblend_rows=40, openhermes_rows=12,
    benchmark_rows=4)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    return clean_build(tmp_path_factory.mktemp("rehearsal") / "hub", seed=0)


def clean_build(*args, **kwargs) -> Path:
    """Build in a fresh (spawned) interpreter, as the CLI does: some earlier test in the same
    pytest process leaves transformers in a state where tied Gemma weights are saved twice."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(build_rehearsal_hub, args, kwargs)


@pytest.fixture(scope="module")
def manifest(hub) -> dict:
    return json.loads((hub / MANIFEST).read_text())


def _tok(hub: Path, hub_id: str):
    return AutoTokenizer.from_pretrained(str(hub / hub_id))


def _lm(hub: Path, hub_id: str):
    return AutoModelForCausalLM.from_pretrained(str(hub / hub_id), dtype=torch.float32)


def _tensor_names(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return set(handle.keys())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------
def test_every_hub_id_is_a_folder(hub):
    for hub_id in [*POLICIES, *REWARD_MODELS]:
        folder = hub / hub_id
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "chat_template.jinja"):
            assert (folder / name).is_file(), f"{hub_id} lacks {name}"
    for hub_id in POLICIES:
        assert (hub / hub_id / "generation_config.json").is_file()
    for hub_id in ["mlabonne/open-perfectblend", "argilla/OpenHermesPreferences", *(d[0] for d in DATASETS.values())]:
        assert (hub / hub_id / "README.md").is_file()
    # the paper's base models are not part of the rehearsal world
    assert not (hub / "meta-llama" / "Llama-3.1-8B").exists() and not (hub / "google" / "gemma-2-2b").exists()
    assert is_complete(hub, 0)


# ----------------------------------------------------------------------------------------------
# Llama-3.1 family
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hub_id", [LLAMA_INSTRUCT, *LLAMA_EXPERTS.values()])
def test_llama_family_architecture(hub, hub_id):
    model = _lm(hub, hub_id)
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert model.model.layers[0].self_attn.k_proj.out_features == cfg.num_key_value_heads * cfg.head_dim
    assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["factor"] == 8.0
    assert cfg.rope_parameters["rope_theta"] == 500000.0
    assert cfg.tie_word_embeddings is False and "lm_head.weight" in _tensor_names(hub / hub_id)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    tok = _tok(hub, hub_id)
    names = ("<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in names}
    gen = model.generation_config
    assert list(gen.eos_token_id) == [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    assert list(cfg.eos_token_id) == list(gen.eos_token_id) and gen.bos_token_id == ids["<|begin_of_text|>"]
    assert tok.eos_token == "<|eot_id|>" and tok.bos_token == "<|begin_of_text|>"
    assert tok("1 + 2")["input_ids"][0] == ids["<|begin_of_text|>"]  # the post-processor adds bos
    # Llama-3's layout: the special block follows the regular vocabulary
    assert min(ids.values()) == len(tok) - 16 - (hub_id == LLAMA_EXPERTS["coding"])


def test_llama_tokenizer_has_no_pad_and_llama3_chat_format(hub):
    tok = _tok(hub, LLAMA_INSTRUCT)
    assert tok.pad_token is None
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    for special in ("<|start_header_id|>", "<|end_header_id|>", "<|finetune_right_pad_id|>", "<|python_tag|>"):
        assert tok.convert_tokens_to_ids(special) not in (None, tok.unk_token_id)
    pieces = [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("x 12345")]
    assert pieces[-2:] == ["123", "45"]  # Llama-3's split regex: numbers in groups of up to 3 digits


# ----------------------------------------------------------------------------------------------
# Gemma-2 family
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hub_id", [GEMMA_INSTRUCT, *GEMMA_EXPERTS.values()])
def test_gemma_family_architecture(hub, hub_id):
    model = _lm(hub, hub_id)
    cfg = model.config
    assert type(model).__name__ == "Gemma2ForCausalLM"
    assert cfg.attn_logit_softcapping == 50.0 and cfg.final_logit_softcapping == 30.0
    assert cfg.sliding_window and set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    assert cfg.num_key_value_heads < cfg.num_attention_heads and cfg.query_pre_attn_scalar == cfg.head_dim
    assert cfg.tie_word_embeddings is True and "lm_head.weight" not in _tensor_names(hub / hub_id)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tok = _tok(hub, hub_id)
    assert type(tok).__name__ == "GemmaTokenizer"
    assert [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>")] == [0, 1, 2, 3]
    assert tok.eos_token == "<eos>" and tok.bos_token == "<bos>"
    assert tok("Tom has 3 apples.")["input_ids"][0] == tok.bos_token_id  # Gemma needs <bos>; the tokenizer adds it
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert sorted(model.generation_config.eos_token_id) == sorted([tok.eos_token_id, eot])


def test_gemma_chat_format(hub):
    tok = _tok(hub, GEMMA_INSTRUCT)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"


# ----------------------------------------------------------------------------------------------
# experts: small deltas of their instruct model; the coding experts append one pad token
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_coding_expert_appends_exactly_one_pad_token(hub, family):
    instruct, experts = FAMILIES[family]
    base_tok, tok = _tok(hub, instruct), _tok(hub, experts["coding"])
    assert len(tok) == len(base_tok) + 1
    base_vocab, vocab = base_tok.get_vocab(), tok.get_vocab()
    appended = [t for t, i in vocab.items() if i == len(base_tok)]
    assert len(appended) == 1 and appended[0] not in base_vocab and tok.pad_token == appended[0]
    assert {t: i for t, i in vocab.items() if i < len(base_tok)} == base_vocab  # shared ids map token for token
    model = _lm(hub, experts["coding"])
    assert model.config.vocab_size == len(tok) and model.config.pad_token_id == len(base_tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    for name, hub_id in experts.items():  # the other experts keep the instruct tokenizer byte for byte
        if name != "coding":
            assert _digest(hub / hub_id / "tokenizer.json") == _digest(hub / instruct / "tokenizer.json")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_experts_are_small_deltas_of_the_instruct_model(hub, family):
    instruct, experts = FAMILIES[family]
    base = _lm(hub, instruct).state_dict()
    for hub_id in experts.values():
        weights = _lm(hub, hub_id).state_dict()
        assert weights.keys() == base.keys()
        num = den = 0.0
        for name, w in base.items():
            delta = weights[name][: w.shape[0]] - w  # appended rows are not part of the task vector
            num, den = num + float(delta.pow(2).sum()), den + float(w.pow(2).sum())
        relative = (num / den) ** 0.5
        assert 0.005 < relative < 0.25, f"{hub_id}: relative task-vector norm {relative:.4f}"


@pytest.mark.parametrize("hub_id", POLICIES)
def test_policies_generate(hub, hub_id):
    tok, model = _tok(hub, hub_id), _lm(hub, hub_id)
    inputs = tok(render_prompt(ALPACA, "Tom has 3 apples. He buys 4 more. How many apples does Tom have?"),
                 return_tensors="pt")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=pad)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_instruct_models_learned_something(manifest):
    for family, hub_id in (("llama3", LLAMA_INSTRUCT), ("gemma2", GEMMA_INSTRUCT)):
        first, last = manifest[family]["losses"][hub_id]
        assert last < first - 1.5, f"{hub_id}: SFT loss {first} -> {last}"


# ----------------------------------------------------------------------------------------------
# reward models
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hub_id", sorted(REWARD_MODELS))
def test_reward_models(hub, hub_id):
    model = AutoModelForSequenceClassification.from_pretrained(str(hub / hub_id), dtype=torch.float32)
    tok = _tok(hub, hub_id)
    assert type(model).__name__ == REWARD_MODELS[hub_id] and model.config.num_labels == 1
    assert model.config.pad_token_id is not None and model.config.pad_token_id == tok.pad_token_id
    chats = [[{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": answer}]
             for answer in ("4", "It is 5, I think, or maybe 6.")]
    texts = tok.apply_chat_template(chats, tokenize=False)
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    # a different vocabulary from every policy and from the other reward model
    vocab = tok.get_vocab()
    for other in (LLAMA_INSTRUCT, GEMMA_INSTRUCT, *(r for r in REWARD_MODELS if r != hub_id)):
        assert _tok(hub, other).get_vocab() != vocab
    marker = "[INST]" if hub_id == MISTRAL_RM else "<start_of_turn>"
    assert marker in texts[0]


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_benchmarks_load_through_the_project_loader(hub, name):
    from datasets import load_dataset

    hub_id, config, split = DATASETS[name]
    spec = BENCHMARKS[name]
    assert (spec.hub_config, spec.split) == (config, split)  # the loader's call is the one mirrored here
    assert len(load_dataset(str(hub / hub_id), config, split=split)) == 60
    records = load_records(name, hub_id=str(hub / hub_id), n=10, seed=0)
    assert len(records) == 10 and all(set(spec.required_fields) <= set(r) for r in records)
    assert all(instruction_for(name, r) for r in records)


def test_sft_mix_loads_and_normalises(hub):
    rows = load_rows({"hub_id": str(hub / "mlabonne/open-perfectblend"), "split": "train"})
    assert len(rows) == 700 and set(rows.column_names) == {"conversations", "source"}
    assert any(r["conversations"][0]["from"] == "system" for r in rows)
    train, holdout, mix, stats = sft_subsets(rows, 300, 50, seed=0, mix_n=100)
    assert (len(train), len(holdout), len(mix)) == (300, 50, 100)
    train_all, _, _, stats = sft_subsets(rows, None, 0, seed=0)
    assert stats["unusable"] == 6 and len(train_all) == 694


def test_preferences_load_and_normalise(hub):
    rows = load_rows({"hub_id": str(hub / "argilla/OpenHermesPreferences"), "split": "train"})
    assert len(rows) == 300
    row = rows[5]
    assert [m["role"] for m in row["chosen"]] == ["user", "assistant"]
    assert row["prompt"] == row["chosen"][0]["content"] and row["chosen_policy"] in row["candidate_policies"]
    assert sorted(row["ranks"]) == list(range(len(row["candidates_completions"])))
    pairs, stats = preference_subset(rows, None, seed=1)
    assert stats["unusable"] == 3 and len(pairs) == 297
    assert all(p["chosen"] != p["rejected"] for p in pairs)


# ----------------------------------------------------------------------------------------------
# determinism, idempotence, crash safety (on a shrunken build)
# ----------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_the_marker_short_circuits(tmp_path):
    first = clean_build(tmp_path / "a", seed=3, settings=SMALL)
    # a second build with the same seed: same bytes, same marker
    second = clean_build(tmp_path / "b", seed=3, settings=SMALL)
    assert (first / MARKER).read_bytes() == (second / MARKER).read_bytes()
    for hub_id in [*POLICIES, *REWARD_MODELS]:
        for name in ("model.safetensors", "tokenizer.json"):
            assert _digest(first / hub_id / name) == _digest(second / hub_id / name), f"{hub_id}/{name}"
    marker = first / MARKER
    stamp = (marker.stat().st_mtime_ns, (first / LLAMA_INSTRUCT / "model.safetensors").stat().st_mtime_ns)
    assert build_rehearsal_hub(first, seed=3, settings=SMALL) == first  # complete: returns at once
    assert stamp == (marker.stat().st_mtime_ns, (first / LLAMA_INSTRUCT / "model.safetensors").stat().st_mtime_ns)
    # another seed replaces the tree, and the weights change with it
    build_rehearsal_hub(first, seed=4, settings=SMALL)
    assert is_complete(first, 4, SMALL) and not is_complete(first, 3, SMALL)
    weights = "model.safetensors"
    assert _digest(first / LLAMA_INSTRUCT / weights) != _digest(second / LLAMA_INSTRUCT / weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folders left behind


def test_a_crash_leaves_nothing_half_built(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(rehearsal_parts, "build_reward_models", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_rehearsal_hub(tmp_path / "hub", seed=0, settings=SMALL)  # in-process: the patched part runs
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_rehearsal_hub(tmp_path / "hub", seed=0, settings=SMALL)
    assert (tmp_path / "hub" / "notes.txt").read_text() == "mine"


def test_cli_reports_a_complete_hub(hub, capsys):
    from fusionroute.rehearsal.__main__ import main

    assert main(["--out", str(hub), "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and '"eot"' in out
    assert json.loads((hub / MANIFEST).read_text())["llama3"]["special_ids"]["eot"] == \
        AutoConfig.from_pretrained(str(hub / LLAMA_INSTRUCT)).eos_token_id[-1]

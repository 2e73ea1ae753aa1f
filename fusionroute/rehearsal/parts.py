"""The heavy half of the rehearsal build: synthetic items, datasets, tokenizers and models.

`run_parts` is what `fusionroute.rehearsal.build` calls, in this process or in a spawned one.
"""
from __future__ import annotations

import hashlib
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig
from transformers import logging as hf_logging

from fusionroute.data import render_prompt
import fusionroute.rehearsal.checkpoints as ck
import fusionroute.rehearsal.hub_datasets as hd
import fusionroute.rehearsal.settings as st
import fusionroute.rehearsal.tokenizer_files as tf
from fusionroute.rehearsal.settings import ALPACA, RehearsalSettings, TrainSettings
from fusionroute.tiny import tasks

EXPERT_DOMAIN = {"math": "math", "coding": "code", "instruction": "instruct"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


@dataclass
class Pool:
    """The synthetic items everything is made of (all from the train pool except `benchmarks`)."""

    domain_items: dict[str, list[dict]]
    blend: list[dict]
    preferences: list[dict]
    rm_pairs: list[dict]
    benchmarks: dict[str, list[dict]]


def derive(seed: int, name: str) -> int:
    """An independent 31-bit seed per component, stable across Python runs."""
    return int.from_bytes(hashlib.sha256(f"rehearsal|{seed}|{name}".encode()).digest()[:4], "big") >> 1


def make_pool(seed: int, s: RehearsalSettings) -> Pool:
    per_domain = s.instruct_items_per_domain + s.expert_items
    return Pool(
        domain_items={d: tasks.make_sft(d, per_domain, derive(seed, f"sft-{d}")) for d in tasks.DOMAINS},
        blend=tasks.make_sft_mix(s.perfectblend_rows, derive(seed, "perfectblend")),
        preferences=tasks.make_preferences(s.openhermes_rows, derive(seed, "openhermes")),
        rm_pairs=tasks.make_preferences(s.rm_pairs, derive(seed, "rm-pairs")),
        benchmarks={b: tasks.make_benchmark(b, s.benchmark_rows, derive(seed, f"bench-{b}"))
                    for b in tasks.BENCHMARKS},
    )


def _texts(items: list[dict]) -> list[str]:
    return [render_prompt(ALPACA, it["instruction"]) + it["response"] for it in items]


def _ends(losses: list[float], k: int = 4) -> list[float]:
    """Mean loss of the first and of the last `k` steps (one batch alone is too noisy to compare)."""
    k = max(1, min(k, len(losses) // 2))
    return [round(sum(losses[:k]) / k, 3), round(sum(losses[-k:]) / k, 3)]


def _policy_corpus(pool: Pool) -> list[str]:
    """The policies' tokenizer corpus: every SFT item and the SFT mix, Alpaca-formatted."""
    return _texts([it for items in pool.domain_items.values() for it in items] + pool.blend)


def _pair_texts(pairs: list[dict]) -> list[str]:
    return [t for p in pairs for t in (p["instruction"] + "\n" + p["chosen"], p["rejected"])]


def _copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


# ----------------------------------------------------------------------------------------------
# policy families
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    name: str
    instruct: str
    experts: dict[str, str]
    instruct_sft: TrainSettings


def _train_family(root: Path, family: Family, toks: tf.TokenizerFiles, config, generation: GenerationConfig,
                  pool: Pool, seed: int, s: RehearsalSettings) -> dict:
    """The instruct model (random init + SFT on all domains), then each expert as a short SFT of it
    on its domain; the coding expert first appends the recipe's pad token."""
    info: dict = {"losses": {}}
    tok, pad = toks.tokenizer, toks.tokenizer.pad_token_id
    pad = toks.tokenizer.eos_token_id if pad is None else pad  # padded positions are masked anyway
    n_inst = s.instruct_items_per_domain
    mix = [it for d in tasks.DOMAINS for it in pool.domain_items[d][:n_inst]]
    random.Random(derive(seed, f"{family.name}-mix")).shuffle(mix)
    model = ck.init_model(AutoModelForCausalLM, config, derive(seed, f"{family.name}-init"))
    losses = ck.train_causal_lm(model, ck.sft_examples(tok, mix, ALPACA, family.instruct_sft), pad,
                                family.instruct_sft, derive(seed, f"{family.name}-sft"))
    info["losses"][family.instruct] = _ends(losses)
    instruct_dir = root / family.instruct
    ck.save_model(model, instruct_dir, s.save_dtype, generation)
    for expert, hub_id in family.experts.items():
        folder = root / hub_id
        _copy_tokenizer(instruct_dir, folder)
        expert_toks = tf.TokenizerFiles(folder, tok)
        model = ck.load_float32(instruct_dir)
        expert_pad = pad
        if expert == "coding":
            expert_toks = tf.add_pad_token(folder, s.appended_pad)
            expert_pad = expert_toks.tokenizer.pad_token_id
            ck.append_pad_row(model, len(expert_toks.tokenizer), expert_pad, derive(seed, f"{hub_id}-resize"))
            info.update(appended_pad_id=expert_pad, coding_vocab=len(expert_toks.tokenizer))
        items = pool.domain_items[EXPERT_DOMAIN[expert]][n_inst:]
        losses = ck.train_causal_lm(model, ck.sft_examples(expert_toks.tokenizer, items, ALPACA, s.expert_sft),
                                    expert_pad, s.expert_sft, derive(seed, f"{hub_id}-sft"))
        info["losses"][hub_id] = _ends(losses)
        ck.save_model(model, folder, s.save_dtype)
    return info


def build_llama(root: Path, pool: Pool, seed: int, s: RehearsalSettings) -> dict:
    corpus = _policy_corpus(pool)
    folder = root / st.LLAMA_INSTRUCT
    toks = tf.save_llama3(tf.train_llama3(corpus, s.llama_regular_vocab), folder)
    ids = {name: toks.id_of(t) for name, t in (("bos", "<|begin_of_text|>"), ("end_of_text", "<|end_of_text|>"),
                                                ("eom", "<|eom_id|>"), ("eot", "<|eot_id|>"))}
    eos = [ids["end_of_text"], ids["eom"], ids["eot"]]  # Llama-3.1-Instruct's generation_config order
    generation = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=eos, do_sample=True, temperature=0.6,
                                  top_p=0.9)
    config = ck.llama31_config(s.shape, len(toks.tokenizer), ids["bos"], eos)
    family = Family("llama3", st.LLAMA_INSTRUCT, st.LLAMA_EXPERTS, s.llama_instruct_sft)
    info = _train_family(root, family, toks, config, generation, pool, seed, s)
    info.update(special_ids=ids, vocab=len(toks.tokenizer))
    return info


def build_gemma(root: Path, pool: Pool, seed: int, s: RehearsalSettings) -> dict:
    corpus = _policy_corpus(pool)
    folder = root / st.GEMMA_INSTRUCT
    toks = tf.save_gemma(tf.train_gemma(corpus, s.gemma_vocab), folder)
    ids = {name: toks.id_of(t) for name, t in (("pad", "<pad>"), ("eos", "<eos>"), ("bos", "<bos>"),
                                                ("start_of_turn", "<start_of_turn>"),
                                                ("end_of_turn", "<end_of_turn>"))}
    eos = [ids["eos"], ids["end_of_turn"]]
    generation = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=eos, pad_token_id=ids["pad"],
                                  cache_implementation="hybrid")  # as gemma-2-2b-it ships it
    config = ck.gemma2_config(s.shape, len(toks.tokenizer), ids["pad"], ids["bos"], eos)
    family = Family("gemma2", st.GEMMA_INSTRUCT, st.GEMMA_EXPERTS, s.gemma_instruct_sft)
    info = _train_family(root, family, toks, config, generation, pool, seed, s)
    info.update(special_ids=ids, vocab=len(toks.tokenizer))
    return info


# ----------------------------------------------------------------------------------------------
# reward models
# ----------------------------------------------------------------------------------------------
def build_reward_models(root: Path, pool: Pool, seed: int, s: RehearsalSettings) -> dict:
    info: dict = {}
    # trained on other text and with other sizes than the policies': different vocabularies
    mistral = tf.save_mistral(tf.train_mistral(_pair_texts(pool.rm_pairs) + _texts(pool.blend), s.mistral_rm_vocab),
                              root / st.MISTRAL_RM)
    gemma = tf.save_gemma(tf.train_gemma(_texts(pool.blend) + _pair_texts(pool.rm_pairs), s.gemma_rm_vocab),
                          root / st.GEMMA_RM)
    rms = ((st.MISTRAL_RM, mistral, ck.mistral_rm_config), (st.GEMMA_RM, gemma, ck.gemma_rm_config))
    for hub_id, toks, make_config in rms:
        t = toks.tokenizer
        config = make_config(s.shape, len(t), t.pad_token_id, t.bos_token_id, t.eos_token_id)
        model = ck.init_model(AutoModelForSequenceClassification, config, derive(seed, f"{hub_id}-init"))
        losses = ck.train_reward_model(model, t, pool.rm_pairs, s.reward, derive(seed, f"{hub_id}-bt"))
        ck.save_model(model, root / hub_id, s.save_dtype)
        info[hub_id] = {"vocab": len(t), "pad_token_id": t.pad_token_id,
                        "bt_loss": _ends(losses)}
    return info


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------
def build_datasets(root: Path, pool: Pool, seed: int) -> dict:
    blend = hd.perfectblend_rows(pool.blend, seed)
    prefs = hd.openhermes_rows(pool.preferences, seed)
    hd.write_perfectblend(root, blend)
    hd.write_openhermes(root, prefs)
    hd.write_benchmarks(root, pool.benchmarks)
    return {hd.PERFECTBLEND: len(blend), hd.OPENHERMES: len(prefs),
            **{name: len(rows) for name, rows in pool.benchmarks.items()}}


# ----------------------------------------------------------------------------------------------
# the build
# ----------------------------------------------------------------------------------------------
@contextmanager
def _quiet_deterministic(threads: int) -> Iterator[None]:
    """Fixed torch threads and quiet transformers logs for the build; restored afterwards."""
    old_threads, old_verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        hf_logging.set_verbosity(old_verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# Parts of the build that share nothing but the synthetic pool; with `workers` > 1 the two jobs
# run in spawned processes (one torch thread each and their own seeds, so the bytes are the same
# as in serial; each process pays ~4 s of imports).
PARTS = {"llama3": "build_llama", "gemma2": "build_gemma", "reward_models": "build_reward_models"}
JOBS = (("gemma2",), ("llama3", "reward_models"))  # ~ balanced: Gemma-2 steps cost twice Llama's


def run_parts(parts: tuple[str, ...], root: str, pool: Pool, seed: int, s: RehearsalSettings) -> dict:
    """{part: (manifest entry, seconds)} for the named parts, in order."""
    results = {}
    with _quiet_deterministic(s.threads):
        for part in parts:
            started = time.perf_counter()
            entry = globals()[PARTS[part]](Path(root), pool, seed, s)
            results[part] = (entry, round(time.perf_counter() - started, 2))
    return results

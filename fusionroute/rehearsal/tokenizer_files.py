"""The rehearsal world's four tokenizers, each trained locally and shaped like its hub original.

transformers 5 does not load `tokenizer.json` as-is for every class: a class with its own
`__init__` (GemmaTokenizer, LlamaTokenizer) keeps only the vocab, the merges and the
post-processor from the file and rebuilds normalizer, pre-tokenizer and decoder itself. So each
stand-in is built with exactly the components its declared class rebuilds, and `save_tokenizer`
reloads the folder with `AutoTokenizer` and refuses it unless the ids of probe texts agree with
the tokenizer that was trained.

- Llama-3 (`PreTrainedTokenizerFast`, loaded verbatim): byte-level BPE behind Llama-3's split
  regex (numbers in groups of up to 3 digits); the regular vocabulary comes first and the special
  tokens follow it (128000+ in the real one), `<|begin_of_text|>` added by the post-processor.
- Gemma (`GemmaTokenizer`): SentencePiece-style BPE over the whole text with spaces as "▁",
  single digits, 256 byte-fallback tokens; `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3.
- Mistral (`LlamaTokenizer`): SentencePiece-style BPE with a Metaspace pre-tokenizer (prefix
  "▁" on the first word), byte fallback; `<unk>`=0, `<s>`=1, `</s>`=2.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPACE = "▁"
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

# Llama-3's pre-tokenizer regex (tokenizer.json of meta-llama/Llama-3.1-8B-Instruct)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Llama-3's special-token block in id order; the reserved slots keep the real relative positions
# (<|finetune_right_pad_id|> = base + 4, <|eot_id|> = base + 9, ...).
LLAMA3_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|reserved_special_token_3|>",
    "<|reserved_special_token_4|>", "<|reserved_special_token_5|>", "<|reserved_special_token_6|>",
    "<|reserved_special_token_7|>",
)
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>")

# A simplified Llama-3.1 template: same markup, without the tool-calling branches and the
# "Cutting Knowledge Date" system block the real one always emits.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# google/gemma-2-2b-it's template (no system role, strictly alternating turns).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
# Mistral-7B-Instruct-v0.2's [INST] format.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

PROBES = (
    "Tom has 12345 apples and 0.5 pears.",
    "def add(x, y):\n    return x + y\n\n\tdone  ",
    "Unicode: café ✓ 数学 — “quoted”",
    "<|eot_id|> <end_of_turn> [INST] hi [/INST]",
)


@dataclass(frozen=True)
class TokenizerFiles:
    """A tokenizer saved in a folder plus what the builders need to know about it."""

    folder: Path
    tokenizer: PreTrainedTokenizerBase

    def id_of(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token:
            raise KeyError(f"{token!r} is not in the tokenizer of {self.folder}")
        return int(tid)


def _bpe_trainer(vocab_size: int, specials: Sequence[str], alphabet: list[str] | None = None) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                               initial_alphabet=alphabet or [])


def _with_byte_fallback(trained: Tokenizer, specials: Sequence[str], unk: str | None) -> Tokenizer:
    """The trained BPE re-indexed SentencePiece-style: specials, then <0x00>..<0xFF>, then the rest
    (the trainer cannot emit byte tokens; the real Gemma/Mistral vocabularies carry them)."""
    spec = json.loads(trained.to_str())["model"]
    learned = sorted(spec["vocab"].items(), key=lambda kv: kv[1])
    skip = set(specials) | set(BYTE_TOKENS)
    order = list(specials) + BYTE_TOKENS + [tok for tok, _ in learned if tok not in skip]
    vocab = {tok: i for i, tok in enumerate(order)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    return Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))


def _spm_decoder(strip_prefix: bool) -> decoders.Decoder:
    parts = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if strip_prefix:
        parts.append(decoders.Strip(content=" ", left=1, right=0))
    return decoders.Sequence(parts)


def _bos_post_processor(bos: str, bos_id: int) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                         special_tokens=[(bos, bos_id)])


def train_llama3(texts: Iterable[str], regular_vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.train_from_iterator(texts, _bpe_trainer(regular_vocab, [], pre_tokenizers.ByteLevel.alphabet()))
    if tok.get_vocab_size() != regular_vocab:
        raise RuntimeError(f"Llama-3 stand-in BPE learned {tok.get_vocab_size()} tokens, wanted {regular_vocab}: "
                           "the training corpus is too small")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        _bos_post_processor(LLAMA3_SPECIALS[0], tok.token_to_id(LLAMA3_SPECIALS[0])),
    ])
    return tok


def _spm_training_split() -> list[pre_tokenizers.PreTokenizer]:
    """SentencePiece's training pieces on "▁"-text: a word with its leading "▁", runs of "▁"
    (indentation) on their own, every digit alone. Inference runs BPE over the whole text; since
    no learned merge crosses these boundaries, it segments the same way."""
    return [pre_tokenizers.Split(Regex(f"{SPACE}+(?={SPACE})|{SPACE}?[^{SPACE}]+|{SPACE}+"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True)]


def train_gemma(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.normalizer = normalizers.Replace(" ", SPACE)
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(_spm_training_split())
    trainer_tok.train_from_iterator(texts, _bpe_trainer(vocab_size - len(BYTE_TOKENS), GEMMA_SPECIALS))
    tok = _with_byte_fallback(trainer_tok, GEMMA_SPECIALS, "<unk>")
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = _spm_decoder(strip_prefix=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIALS])
    tok.post_processor = _bos_post_processor("<bos>", tok.token_to_id("<bos>"))
    return tok


def train_mistral(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False), *_spm_training_split()])
    trainer_tok.train_from_iterator(texts, _bpe_trainer(vocab_size - len(BYTE_TOKENS), MISTRAL_SPECIALS))
    # LlamaTokenizer (transformers 5) builds its BPE without an unk token: unknown bytes fall back
    tok = _with_byte_fallback(trainer_tok, MISTRAL_SPECIALS, None)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False)
    tok.decoder = _spm_decoder(strip_prefix=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MISTRAL_SPECIALS])
    tok.post_processor = _bos_post_processor("<s>", tok.token_to_id("<s>"))
    return tok


def _patch_config(folder: Path, updates: dict) -> None:
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.update(updates)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def save_tokenizer(raw: Tokenizer, folder: Path, tokenizer_class: str, special: dict[str, str | None],
                   chat_template: str, extra_config: dict | None = None) -> TokenizerFiles:
    """Save `raw` as a hub tokenizer folder of class `tokenizer_class`, then reload it with
    AutoTokenizer and check it encodes the probes exactly as `raw` does."""
    folder.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, clean_up_tokenization_spaces=False,
                                   **{k: v for k, v in special.items() if v is not None})
    fast.chat_template = chat_template
    fast.save_pretrained(str(folder))
    _patch_config(folder, {"tokenizer_class": tokenizer_class, **(extra_config or {})})
    loaded = AutoTokenizer.from_pretrained(str(folder))
    for text in PROBES:
        want, got = raw.encode(text).ids, loaded(text)["input_ids"]
        if want != got:
            raise RuntimeError(f"{folder}: {tokenizer_class} reloads the tokenizer differently on {text!r}:\n"
                               f"trained {want}\nloaded  {got}")
    return TokenizerFiles(folder, loaded)


def save_llama3(raw: Tokenizer, folder: Path) -> TokenizerFiles:
    # Llama-3.1-Instruct: eos is <|eot_id|> (end of turn), no pad token, class PreTrainedTokenizerFast
    return save_tokenizer(raw, folder, "PreTrainedTokenizerFast",
                          {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, LLAMA3_CHAT_TEMPLATE,
                          {"model_max_length": 131072})


def save_gemma(raw: Tokenizer, folder: Path) -> TokenizerFiles:
    return save_tokenizer(raw, folder, "GemmaTokenizer",
                          {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                           "mask_token": "<mask>"}, GEMMA_CHAT_TEMPLATE,
                          {"add_bos_token": True, "add_eos_token": False, "model_max_length": 8192})


def save_mistral(raw: Tokenizer, folder: Path) -> TokenizerFiles:
    # Mistral ships no pad token; reward-model recipes pad with <unk>, which byte fallback never emits
    return save_tokenizer(raw, folder, "LlamaTokenizer",
                          {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"},
                          MISTRAL_CHAT_TEMPLATE,
                          {"add_bos_token": True, "add_eos_token": False, "legacy": False, "model_max_length": 32768})


def add_pad_token(folder: Path, pad: str) -> TokenizerFiles:
    """A fine-tuning recipe's appended pad token (vocabulary + 1), saved back into `folder`.

    transformers 5 re-saves a loaded tokenizer with `tokenizer_class` "TokenizersBackend" (for
    PreTrainedTokenizerFast) and with its loading kwargs (`is_local`, `local_files_only`) in
    tokenizer_config.json; the original config is restored with only `pad_token` added."""
    original = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(str(folder))
    if pad in tok.get_vocab():
        raise ValueError(f"{pad!r} is already in the vocabulary of {folder}")
    before = [tok(text)["input_ids"] for text in PROBES]
    tok.add_special_tokens({"pad_token": pad})
    tok.save_pretrained(str(folder))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**original, "pad_token": pad}, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
        encoding="utf-8")
    loaded = AutoTokenizer.from_pretrained(str(folder))
    if [loaded(text)["input_ids"] for text in PROBES] != before or loaded.pad_token_id != len(loaded) - 1:
        raise RuntimeError(f"{folder}: appending {pad!r} changed the tokenizer beyond one new id")
    return TokenizerFiles(folder, loaded)

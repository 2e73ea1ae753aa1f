"""The reward model of Sequence Selection and Collab: training (tiny world) and one scoring interface.

Paper configs use hub reward models (sequence-classification LMs with their own tokenizer and chat
template, e.g. "Ray2333/reward-model-Mistral-7B-instruct-Unified-Feedback" for Llama-3,
"Ray2333/Gemma-2B-rewardmodel-baseline" for Gemma-2). The tiny world trains one: a scalar head
(`AutoModelForSequenceClassification`, num_labels=1) on the tiny base LM, with the Bradley-Terry
loss on preference pairs rendered with the world's prompt template.

Both are used through `RewardScorer.score(prompts, responses)`, which works from TEXT: the reward
model's tokenizer may differ from the experts'. `prompts` are the *instructions* (user text);
the scorer formats each pair in the reward model's own format:
- "template": BOS + render_prompt(template, instruction) + response + EOS, exactly as the tiny RM
  was trained (`fusionroute.data.encode_pair`). A trained RM saves its template and max length in
  `reward_format.json`, which the scorer reads back.
- "chat": the RM tokenizer's chat template with user = instruction, assistant = response.
"auto" picks "template" when the directory has `reward_format.json`, else "chat" when the
tokenizer has a chat template, else "template" (with no template: instruction + response).

The reward is read at each sequence's last token. Sequences are left-padded and fed as
`inputs_embeds` with explicit position ids, so the pooled position is the last real token even
when the RM's pad token equals its EOS token (Llama-3/Mistral-style tokenizers), where HF's
"rightmost non-pad input id" pooling would land on the wrong token.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from fusionroute.data import batch_indices, encode_pair, render_prompt
from fusionroute.io import write_json
from fusionroute.losses import bradley_terry_loss
from fusionroute.models import DTYPES, ModelSource, load_tokenizer
from fusionroute.scaling import is_main_process, save_trained
from fusionroute.training import OptimConfig, config_dict, train_loop, write_log

FORMAT_FILE = "reward_format.json"
METRICS_FILE = "reward_metrics.json"
FORMATS = ("auto", "template", "chat")


def instruction_from_prompt(template: str, prompt: str) -> str:
    """Invert `render_prompt`: the instruction inside a templated prompt (ValueError if it does not fit)."""
    if "{instruction}" not in template:
        raise ValueError("prompt_template must contain '{instruction}'")
    head, tail = template.split("{instruction}", 1)
    if not (prompt.startswith(head) and prompt.endswith(tail) and len(prompt) >= len(head) + len(tail)):
        raise ValueError(f"prompt does not follow the prompt template: {prompt[:80]!r}...")
    return prompt[len(head) : len(prompt) - len(tail)]


def sequence_rewards(model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_token_id: int) -> torch.Tensor:
    """Scalar reward at the last token of each sequence, (n,); differentiable (no no_grad here).
    `model` may be wrapped for distributed training (its `.module` is the HF model)."""
    core = getattr(model, "module", model)
    device = core.device
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    embeds = core.get_input_embeddings()(ids)
    # HF warns that it cannot see padding in inputs_embeds: intended here (left padding, pool at -1).
    hf_logger = hf_logging.get_logger("transformers.modeling_layers")
    level = hf_logger.level
    hf_logger.setLevel(hf_logging.ERROR)
    try:
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    finally:
        hf_logger.setLevel(level)
    return out.logits[:, 0].float()


class RewardScorer:
    """Batched, no-grad scalar rewards for (instruction, response) text pairs."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        fmt: str = "template",
        prompt_template: str | None = None,
        max_len: int | None = None,
        batch_size: int = 16,
    ):
        if fmt not in ("template", "chat"):
            raise ValueError(f"reward format must be 'template' or 'chat', got {fmt!r}")
        if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("reward format 'chat' needs a tokenizer with a chat template")
        if model.config.num_labels != 1:
            raise ValueError(f"a reward model has one output, this one has num_labels={model.config.num_labels}")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # only needed to pass HF's batch check
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.prompt_template = prompt_template
        self.max_len = int(max_len or getattr(model.config, "max_position_embeddings", 4096) or 4096)
        self.batch_size = batch_size
        self.calls = 0  # sequences scored so far (one RM forward each, for the forwards accounting)

    @classmethod
    def from_pretrained(
        cls,
        spec: str | dict | ModelSource,
        dtype: str = "float32",
        device: str = "cpu",
        fmt: str = "auto",
        prompt_template: str | None = None,
        batch_size: int = 16,
    ) -> "RewardScorer":
        """Load a saved RM directory, a hub id or a packaged model; format settings as described above."""
        if fmt not in FORMATS:
            raise ValueError(f"reward format must be one of {FORMATS}, got {fmt!r}")
        name, extra = ModelSource.parse(spec).resolve()
        tokenizer = load_tokenizer(spec)
        saved: dict[str, Any] = {}
        fmt_file = Path(name) / FORMAT_FILE
        if fmt_file.exists():
            saved = json.loads(fmt_file.read_text())
        if fmt == "auto":
            fmt = saved.get("format") or ("chat" if getattr(tokenizer, "chat_template", None) else "template")
        model = AutoModelForSequenceClassification.from_pretrained(name, dtype=DTYPES[dtype], **extra)
        model.to(device)
        return cls(model, tokenizer, fmt=fmt, prompt_template=prompt_template or saved.get("prompt_template"),
                   max_len=saved.get("max_len"), batch_size=batch_size)

    def encode(self, prompt: str, response: str) -> list[int]:
        """Token ids the RM reads for one (instruction, response) pair."""
        if self.fmt == "template":
            text = render_prompt(self.prompt_template, prompt) if self.prompt_template else prompt
            return encode_pair(self.tokenizer, text, response, self.max_len, add_eos=True).input_ids
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-self.max_len :]

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            values = sequence_rewards(self.model, [encoded[i] for i in chunk], self.tokenizer.pad_token_id)
            for i, v in zip(chunk, values.tolist()):
                scores[i] = float(v)
        self.calls += len(encoded)
        return scores


# ----------------------------------------------------------------------------------------------
# Training (tiny world)


@dataclass
class RewardTrainConfig:
    max_len: int = 256  # tokens per prompt+response sequence (responses truncated)
    heldout_fraction: float = 0.1  # share of the pairs held out for the accuracy report
    micro_batch_size: int = 0  # pairs per forward; 0 = the whole optimiser batch
    eval_batch_size: int = 32  # pairs per forward when measuring accuracy
    split_seed: int = 0  # seed of the train / held-out split
    offtopic_ratio: float = 0.0  # extra relevance pairs per preference pair (see offtopic_pairs); 0 = none
    train_accuracy_pairs: int = 500  # training pairs (a seeded sample) the reported train accuracy is measured on


def _sample(items: Sequence[dict], k: int, seed: int) -> list[dict]:
    """`k` of `items` drawn without replacement (all of them when there are at most `k`), seeded."""
    items = list(items)
    return items if len(items) <= k else random.Random(seed).sample(items, k)


def split_pairs(pairs: Sequence[dict], heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded random split into (train, held-out); at least one pair on each side when possible."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = int(round(heldout_fraction * len(pairs)))
    if heldout_fraction > 0 and len(pairs) > 1:
        n_held = min(max(1, n_held), len(pairs) - 1)
    held = [pairs[i] for i in order[:n_held]]
    train = [pairs[i] for i in order[n_held:]]
    return train, held


def offtopic_pairs(pairs: Sequence[dict], ratio: float, seed: int) -> list[dict]:
    """Relevance pairs: (instruction, its chosen response) over the chosen response of another
    pair's instruction, from another domain when the pairs carry one (`"domain"`).

    Preference pairs contrast a good response with a subtly flawed one to the SAME instruction, so
    a reward model trained on them alone never learns that an answer to another question is
    worse; general reward models (the paper's) know this, and Sequence Selection and Collab rely
    on it to tell the domain expert's answer from the others'. `ratio` pairs per input pair."""
    if ratio < 0:
        raise ValueError(f"offtopic_ratio must be >= 0, got {ratio}")
    count = int(round(ratio * len(pairs)))
    if count == 0 or len(pairs) < 2:
        return []
    rng = random.Random(f"offtopic|{seed}")
    by_domain: dict[object, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_domain.setdefault(pair.get("domain"), []).append(i)
    # per domain, the pairs whose answers may serve as its off-topic answers (computed once)
    candidates = {d: [j for other, js in by_domain.items() if other != d or other is None for j in js]
                  for d in by_domain}
    out = []
    for k in range(count):
        i = k % len(pairs)
        others = [j for j in candidates[pairs[i].get("domain")] if pairs[j]["instruction"] != pairs[i]["instruction"]]
        if not others:
            continue
        j = rng.choice(others)
        out.append({"instruction": pairs[i]["instruction"], "chosen": pairs[i]["chosen"], "rejected": pairs[j]["chosen"],
                    "kind": "offtopic"})
    return out


def load_reward_init(base: str | dict | ModelSource, tokenizer: PreTrainedTokenizerBase, dtype: str = "float32",
                     device: str = "cpu") -> PreTrainedModel:
    """A 1-output sequence-classification model initialised from a causal LM directory (head is new)."""
    name, extra = ModelSource.parse(base).resolve()
    model = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=DTYPES[dtype], **extra
    )
    return model.to(device)


@torch.no_grad()
def pair_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[dict],
                  template: str, max_len: int, batch_size: int = 32) -> float | None:
    """Share of pairs with r(chosen) > r(rejected); a tie counts one half."""
    if not pairs:
        return None
    was_training = model.training
    model.eval()
    hits = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        chosen, rejected = _pair_rewards(model, tokenizer, chunk, template, max_len)
        hits += float((chosen > rejected).sum()) + 0.5 * float((chosen == rejected).sum())
    model.train(was_training)
    return hits / len(pairs)


def _encode_pair_sides(tokenizer, pair: dict, template: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of (prompt + chosen, prompt + rejected), as the reward model reads them."""
    prompt = render_prompt(template, pair["instruction"])
    chosen, rejected = (encode_pair(tokenizer, prompt, pair[key], max_len, add_eos=True).input_ids
                        for key in ("chosen", "rejected"))
    return chosen, rejected


def _pair_rewards(model, tokenizer, pairs: Sequence[dict], template: str, max_len: int):
    sides = [_encode_pair_sides(tokenizer, pair, template, max_len) for pair in pairs]
    rewards = sequence_rewards(model, [c for c, _ in sides] + [r for _, r in sides], tokenizer.pad_token_id)
    return rewards[: len(pairs)], rewards[len(pairs) :]


def train_reward_model(
    base: str | dict,
    pairs: Sequence[dict],
    prompt_template: str,
    out_dir: str | Path,
    optim: OptimConfig,
    cfg: RewardTrainConfig | None = None,
    tokenizer: str | dict | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Train a Bradley-Terry reward model on `pairs` ({"instruction", "chosen", "rejected"}).

    Saves the model, its tokenizer, `reward_format.json` (how to render inputs when scoring),
    `train_log.json` and `reward_metrics.json` (held-out pair accuracy, before and after) in
    `out_dir`; returns the metrics.
    """
    cfg = cfg or RewardTrainConfig()
    for pair in pairs:
        missing = {"instruction", "chosen", "rejected"} - set(pair)
        if missing:
            raise ValueError(f"preference pair lacks {sorted(missing)}: {pair}")
    tok = load_tokenizer(tokenizer or base)
    torch.manual_seed(optim.seed)  # the new scalar head's initialisation
    model = load_reward_init(base, tok, dtype=dtype, device=device)
    train, held = split_pairs(list(pairs), cfg.heldout_fraction, cfg.split_seed)
    if not train:
        raise ValueError("no training pairs left after the held-out split")
    # relevance pairs are built within each side of the split, so nothing held out is trained on
    held_offtopic = offtopic_pairs(held, cfg.offtopic_ratio, cfg.split_seed + 1)
    train = train + offtopic_pairs(train, cfg.offtopic_ratio, cfg.split_seed)
    acc_before = pair_accuracy(model, tok, held, prompt_template, cfg.max_len, cfg.eval_batch_size)

    # encoded once; batches grouped by length (the longer side of each pair), as the LM trainers
    # do, so that a batch's padding (wasted compute on a CPU) mostly disappears
    encoded = [_encode_pair_sides(tok, pair, prompt_template, cfg.max_len) for pair in train]
    batches = list(batch_indices(len(train), optim.batch_size, optim.steps, optim.seed,
                                 lengths=[max(len(c), len(r)) for c, r in encoded]))
    if cfg.micro_batch_size:
        optim = replace(optim, micro_batch_size=min(cfg.micro_batch_size, optim.batch_size))

    def micro_loss(micro: list[int], live: dict) -> torch.Tensor:
        rewards = sequence_rewards(live["model"], [encoded[i][0] for i in micro] + [encoded[i][1] for i in micro],
                                   tok.pad_token_id)
        return bradley_terry_loss(rewards[: len(micro)], rewards[len(micro) :]).mean()

    model.train()
    result = train_loop({"model": model}, batches, micro_loss, optim, desc="reward model")
    log = result.log
    model.eval()
    # the train accuracy on a seeded sample: a diagnostic (fit vs held out), and over every
    # training pair it cost a third of the tiny world's reward-model job
    fit_sample = _sample(train, cfg.train_accuracy_pairs, cfg.split_seed)
    metrics = {
        "heldout_accuracy": pair_accuracy(model, tok, held, prompt_template, cfg.max_len, cfg.eval_batch_size),
        "heldout_accuracy_before": acc_before,
        "heldout_offtopic_accuracy": (pair_accuracy(model, tok, held_offtopic, prompt_template, cfg.max_len,
                                                    cfg.eval_batch_size) if held_offtopic else None),
        "train_accuracy": pair_accuracy(model, tok, fit_sample, prompt_template, cfg.max_len, cfg.eval_batch_size),
        "n_train_accuracy": len(fit_sample),
        "n_train": len(train),
        "n_heldout": len(held),
        "final_loss": log[-1]["loss"] if log else None,
        "optim": config_dict(optim),
        "config": asdict(cfg),
    }
    out = Path(out_dir)
    save_trained(result.modules["model"], out, tok)
    if not is_main_process():
        return metrics
    write_json(out / FORMAT_FILE, {"format": "template", "prompt_template": prompt_template, "max_len": cfg.max_len})
    write_log(out / "train_log.json", log, extra={"heldout_accuracy": metrics["heldout_accuracy"]})
    write_json(out / METRICS_FILE, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    """CLI for the reward-model rule: python -m baselines.reward --base DIR --pairs pairs.jsonl --template T --out DIR"""
    import argparse

    from fusionroute.io import read_jsonl

    def optim_config(text: str) -> OptimConfig:
        return OptimConfig.from_dict(json.loads(text))

    def reward_config(text: str) -> RewardTrainConfig:
        return RewardTrainConfig(**json.loads(text))

    parser = argparse.ArgumentParser(description="Train a Bradley-Terry reward model (tiny world)")
    for flag, what in (("--base", "causal LM to initialise from (dir or hub id)"),
                       ("--pairs", "JSONL of {instruction, chosen, rejected}"),
                       ("--template", "the world's prompt template"),
                       ("--out", "directory of the trained model and its metrics")):
        parser.add_argument(flag, required=True, help=what)
    # the JSON options are parsed into their configs here: bad JSON or a bad field is a usage error
    # (--optim has no default: steps, batch_size and lr have none)
    parser.add_argument("--optim", type=optim_config, required=True, help="JSON OptimConfig fields (steps, lr, ...)")
    parser.add_argument("--config", type=reward_config, default="{}", help="JSON RewardTrainConfig fields")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    metrics = train_reward_model(args.base, read_jsonl(args.pairs), args.template, args.out, args.optim, args.config,
                                 dtype=args.dtype, device=args.device)
    print(json.dumps({k: metrics[k] for k in ("heldout_accuracy", "heldout_accuracy_before", "n_train", "n_heldout")}))


if __name__ == "__main__":
    main()

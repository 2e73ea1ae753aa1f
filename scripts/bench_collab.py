"""Speed of Collab decoding (baselines.collab): KV caches vs the original re-encoding loop.

Measured side by side in one run, same machine, same threads, same models and prompts:
  old - Collab.reference_generate: every step each expert re-encodes every prefix to propose its
        top-K tokens, and each expert's lookahead is a fresh greedy decode whose prefill
        re-encodes prefix + candidate for every candidate
  new - Collab.generate: one KV cache per expert over the committed prefixes (a proposal forward
        reads only the last emitted token); the lookahead forks the cached rows per candidate and
        decodes L single-token steps, batched over the expert's candidates of all rows
Both must give the same outputs: the script asserts identical token ids, expert ids and forward
counts for every prompt (and stops otherwise).

Reported per setting (batch size B, lookahead L): wall and CPU seconds per emitted token of each
(best of --repeats for each clock, old and new interleaved), the ratios old/new (wall and CPU), and the share of
the new time spent in the reward model (the same work in both: it scores every candidate's whole
text at every step), with the ratio of the expert-side time alone (total minus reward model).

Models: --experts random Llamas (hidden --hidden, --layers layers, head dim 64) over a BPE
tokenizer of about --vocab ids trained here on synthetic text, a small random reward model
(hidden 64, 2 layers), templated prompts of about --prompt-tokens tokens (lengths differ by row).
Random experts emit the end id rarely, so rows run to --new-tokens.

On a machine shared with other jobs, keep --threads 1 (the default) and read the CPU-time ratio.

Usage: python scripts/bench_collab.py [--batches 1 4] [--lookaheads 3 12] [--top-k 2] [--new-tokens 32]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from baselines.collab import Collab, CollabParams
from baselines.reward import RewardScorer
from fusionroute.data import render_prompt
from fusionroute.vocab import SharedVocabulary

TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "fa", "ve", "zo", "xi", "be", "hu"]


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n))


def build_tokenizer(vocab: int, directory: str):
    from fusionroute.models import load_tokenizer
    from fusionroute.tiny.tokenizer import train_tokenizer

    rng = random.Random(0)
    corpus = [words(rng, 60) + f" {rng.randint(0, 9999)}." for _ in range(400)] + [TEMPLATE] * 20
    train_tokenizer(corpus, vocab_size=vocab, out_dir=directory)
    return load_tokenizer(directory)


def llama_config(tokenizer, hidden: int, layers: int, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                       num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                       num_key_value_heads=max(1, hidden // 64), max_position_embeddings=4096,
                       initializer_range=0.1, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kw)


def make_prompts(tokenizer, n: int, target_tokens: int, seed: int) -> list[str]:
    """n templated prompts of about target_tokens tokens each (+-20%, so a batch is padded)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        goal = int(target_tokens * rng.uniform(0.8, 1.2))
        text = words(rng, 4)
        while len(tokenizer(render_prompt(TEMPLATE, text), add_special_tokens=False)["input_ids"]) < goal:
            text += " " + words(rng, 4)
        out.append(render_prompt(TEMPLATE, text))
    return out


class TimedScorer(RewardScorer):
    """A RewardScorer that adds up the wall and CPU seconds spent in `score`."""

    wall = cpu = 0.0

    def score(self, prompts, responses):
        w, c = time.perf_counter(), time.process_time()
        try:
            return super().score(prompts, responses)
        finally:
            self.wall += time.perf_counter() - w
            self.cpu += time.process_time() - c


def measure(fn, scorer: TimedScorer):
    scorer.wall = scorer.cpu = 0.0
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c, scorer.wall, scorer.cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--lookaheads", type=int, nargs="+", default=[3, 12])
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    tokenizer = build_tokenizer(args.vocab, tmp.name)
    experts = []
    for seed in range(1, 1 + args.experts):
        torch.manual_seed(seed)
        experts.append(LlamaForCausalLM(llama_config(tokenizer, args.hidden, args.layers)).eval())
    torch.manual_seed(100)
    rm = LlamaForSequenceClassification(llama_config(tokenizer, 64, 2, num_labels=1)).eval()
    scorer = TimedScorer(rm, tokenizer, fmt="template", prompt_template=TEMPLATE, batch_size=64)
    vocab = SharedVocabulary(size=len(tokenizer), stop_ids=(tokenizer.eos_token_id,), masked={})
    prompts = make_prompts(tokenizer, max(args.batches), args.prompt_tokens, seed=0)
    print(f"{args.experts} random Llama experts (hidden {args.hidden}, {args.layers} layers), vocab {len(tokenizer)}, "
          f"prompts of ~{args.prompt_tokens} tokens, top_k {args.top_k}, {args.new_tokens} new tokens, "
          f"{args.threads} thread(s), best of {args.repeats}")
    # warm-up (allocator, first-call overheads) on a short run of each
    warm = Collab(experts, tokenizer, scorer, CollabParams(top_k=args.top_k, lookahead=2, weight=args.weight),
                  vocab=vocab)
    warm.reference_generate(prompts[:1], 2)
    warm.generate(prompts[:1], 2)

    header = (f"{'B':>3} {'L':>3} {'tokens':>6} | {'wall ms/tok old':>15} {'new':>6} {'old/new':>7} | "
              f"{'cpu ms/tok old':>14} {'new':>6} {'old/new':>7} | {'RM share (new)':>14} {'experts-only old/new':>20}")
    print(header)
    print("-" * len(header))
    results = []
    for batch in args.batches:
        for lookahead in args.lookaheads:
            gen = Collab(experts, tokenizer, scorer, CollabParams(top_k=args.top_k, lookahead=lookahead,
                                                                  weight=args.weight), vocab=vocab)
            batch_prompts = prompts[:batch]
            # per implementation: best wall time, and best CPU time with the reward model's CPU time in that run
            best = {"old": [float("inf"), float("inf"), 0.0], "new": [float("inf"), float("inf"), 0.0]}
            outs = {}
            for _ in range(args.repeats):
                for name, fn in (("old", gen.reference_generate), ("new", gen.generate)):
                    out, wall, cpu, _, rm_cpu = measure(lambda: fn(batch_prompts, args.new_tokens), scorer)
                    outs[name] = out
                    best[name][0] = min(best[name][0], wall)
                    if cpu < best[name][1]:
                        best[name][1:] = [cpu, rm_cpu]
            old, new = outs["old"], outs["new"]
            for i, (a, b) in enumerate(zip(old, new)):
                if (a.token_ids, a.expert_ids, a.extra) != (b.token_ids, b.expert_ids, b.extra):
                    raise SystemExit(f"outputs differ (B={batch}, L={lookahead}, row {i}):\n"
                                     f"old {a.token_ids} {a.expert_ids}\nnew {b.token_ids} {b.expert_ids}")
            tokens = sum(len(c.token_ids) for c in old)
            (ow, oc, orc), (nw, nc, nrc) = best["old"], best["new"]
            row = {
                "batch": batch, "lookahead": lookahead, "tokens": tokens,
                "old_wall_ms_per_token": 1e3 * ow / tokens, "new_wall_ms_per_token": 1e3 * nw / tokens,
                "old_cpu_ms_per_token": 1e3 * oc / tokens, "new_cpu_ms_per_token": 1e3 * nc / tokens,
                "wall_ratio": ow / nw, "cpu_ratio": oc / nc,
                "rm_share_new_cpu": nrc / nc,
                "experts_only_cpu_ratio": (oc - orc) / max(nc - nrc, 1e-9),
                "identical_outputs": True,
            }
            results.append(row)
            print(f"{batch:>3} {lookahead:>3} {tokens:>6} | {row['old_wall_ms_per_token']:>15.1f} "
                  f"{row['new_wall_ms_per_token']:>6.1f} {row['wall_ratio']:>6.2f}x | "
                  f"{row['old_cpu_ms_per_token']:>14.1f} {row['new_cpu_ms_per_token']:>6.1f} "
                  f"{row['cpu_ratio']:>6.2f}x | "
                  f"{100 * row['rm_share_new_cpu']:>13.0f}% {row['experts_only_cpu_ratio']:>19.2f}x", flush=True)
    print("outputs identical (token ids, expert ids, forwards per token) in every setting")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

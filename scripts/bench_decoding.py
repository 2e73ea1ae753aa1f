"""Speed of FusionRoute decoding (fusionroute.decoding.fused_generate) on tiny random models.

Measured side by side in one run, same machine, same threads:
  single  - one expert alone, greedy_generate (KV cache, batched): the cost floor of decoding
  hf-gen  - the same with transformers' generate (context only)
  fused   - fused_generate: router every step + only the selected expert on the rows that chose it
  naive   - naive_fused_generate: router + every expert on every row every step (KV caches)
Reported: tokens/s of each; model forwards per emitted token (per row); model calls per decode
step (batch level: one call = one forward of one model over some rows); the row-tokens the
experts process per emitted token (catch-up work, padding included); and the ratios
fused/single (target >= 0.4; about 0.5 is the limit with two forwards per token) and
fused/naive (target >= 1.5 with three experts).

Routing patterns. Random weights do not route like a trained router, so the routing decisions
are simulated: the router's LM and routing head really run, and a large bias from a per-row
schedule, keyed by (batch row, position), is added to the routing logits (ScheduledRouter). The
key is the batch row, which is stable here because eos is disabled (no row finishes early).
  sticky - each row follows its own Markov chain over the experts that stays with probability
           0.9 (mean run length 10 tokens): realistic routing comes in runs (a derivation
           stays with the math expert for a span, a code block with the code expert)
  random - each row picks an expert uniformly at random at every token (switches 2/3 of the time)
  switch - every row switches expert at every token (worst case for catch-up), rows spread
           over the experts

Expect fused/naive of about 2 at batch 1 but only about 1 at batch 16 on a CPU: catch-up saves
model calls, not expert compute (see fusionroute/decoding/decoders.py), and at batch 16 these tiny models
are compute-bound and every expert is selected by some row at nearly every step.

On a machine shared with other jobs use --threads 1 --clock cpu.

--world build/tiny/tiny measures the TRAINED tiny world instead: its router and experts, prompts
from the five tiny benchmarks (interleaved, so a batch mixes domains; or `--domain gsm8k`: one
benchmark's prompts, as the workflow batches them), and the routing decisions the trained routing
head really makes (pattern "trained"); "single" is the instruction expert.

Usage: python scripts/bench_decoding.py [--threads 2] [--new-tokens 128] [--batches 1 16]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fusionroute.decoding import fused_generate, greedy_generate
from fusionroute.decoding.oracles import naive_fused_generate
from fusionroute.router import RouterConfig, RouterModel

N_EXPERTS = 3


def tiny_llama(seed: int, args) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        initializer_range=0.1,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).to(torch.float32).eval()


BENCHMARKS = ("gsm8k", "math500", "mbpp", "humaneval", "ifeval")


def load_world(build_dir: str, results_dir: str, domain: str | None):
    """The trained router, experts and real benchmark prompts of a built tiny world: the five
    benchmarks interleaved (a batch mixes domains), or one benchmark's prompts (`domain`: a
    batch of one domain, which is how the workflow decodes)."""
    from pathlib import Path

    from fusionroute.data import render_prompt
    from fusionroute.eval.benchmarks import instruction_for
    from fusionroute.io import read_jsonl
    from fusionroute.methods import encode_prompts
    from fusionroute.models import load_causal_lm, load_tokenizer

    build = Path(build_dir)
    router = RouterModel.from_pretrained(build / "router").eval()
    experts = [load_causal_lm(str(build / "experts" / name)) for name in router.config.expert_names]
    tokenizer = load_tokenizer(str(build / "router"))
    per_benchmark = [
        [instruction_for(b, r) for r in read_jsonl(Path(results_dir) / "data" / f"{b}.jsonl")]
        for b in ((domain,) if domain else BENCHMARKS)
    ]
    template = "### Instruction:\n{instruction}\n\n### Response:\n"
    interleaved = [render_prompt(template, x) for group in zip(*per_benchmark) for x in group]
    return router, experts, encode_prompts(tokenizer, interleaved)


class ScheduledRouter(RouterModel):
    """A router whose routing decisions follow a given schedule[row, position] (see module doc)."""

    schedule: torch.Tensor | None = None  # (rows, positions) expert ids

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        out = super().forward(input_ids, attention_mask, past_key_values, use_cache, **kwargs)
        pos = kwargs["position_ids"]  # the decoders always pass explicit positions
        choice = self.schedule[: pos.shape[0]].gather(1, pos.clamp(max=self.schedule.shape[1] - 1))
        bias = torch.nn.functional.one_hot(choice, self.config.n_experts).to(out.routing_logits.dtype) * 1e4
        out.routing_logits = out.routing_logits + bias
        return out


def make_schedule(pattern: str, rows: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if pattern == "switch":
        pos = torch.arange(length)[None, :] + torch.arange(rows)[:, None]
        return pos % N_EXPERTS
    if pattern == "random":
        return torch.randint(0, N_EXPERTS, (rows, length), generator=g)
    if pattern == "sticky":
        sched = torch.empty((rows, length), dtype=torch.long)
        sched[:, 0] = torch.randint(0, N_EXPERTS, (rows,), generator=g)
        for t in range(1, length):
            move = torch.rand(rows, generator=g) >= 0.9
            other = (sched[:, t - 1] + torch.randint(1, N_EXPERTS, (rows,), generator=g)) % N_EXPERTS
            sched[:, t] = torch.where(move, other, sched[:, t - 1])
        return sched
    raise ValueError(pattern)


def best_of(fns: dict, repeats: int, clock) -> dict:
    """Run the functions round-robin `repeats` times; per function: (best seconds, last result).
    Best-of (not mean) and interleaving make the ratios robust to other load on a shared machine."""
    best = {k: float("inf") for k in fns}
    last = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            last[k] = fn()
            best[k] = min(best[k], clock() - t0)
    return {k: (best[k], last[k]) for k in fns}


class Counter:
    """Counts model calls (all models) and the row-tokens (padding included) the experts process."""

    def __init__(self, router: RouterModel, experts: list) -> None:
        self.calls = self.expert_tokens = 0
        for m in [router.lm, *experts]:
            m.register_forward_pre_hook(self._call)
        for m in experts:
            m.register_forward_pre_hook(self._tokens, with_kwargs=True)

    def _call(self, *_):
        self.calls += 1

    def _tokens(self, _module, _args, kwargs):
        self.expert_tokens += kwargs["input_ids"].numel()

    def measure(self, fn) -> tuple[int, int]:
        self.calls = self.expert_tokens = 0
        fn()
        return self.calls, self.expert_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--patterns", nargs="+", default=["sticky", "random", "switch"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: wall-clock time; cpu: this process's CPU time (use with --threads 1 on a machine "
        "shared with other jobs: time spent descheduled then does not count)",
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--world", help="a built tiny family directory (e.g. build/tiny/tiny): trained models")
    ap.add_argument("--results", default="results/tiny", help="with --world: where its benchmark data lie")
    ap.add_argument("--domain", choices=BENCHMARKS,
                    help="with --world: prompts of this benchmark only (default: all five interleaved)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    if args.world:
        router, experts, prompt_pool = load_world(args.world, args.results, args.domain)
        experts = [experts[-1]] + experts[:-1]  # "single" = experts[0] = the instruction expert
        router.config.expert_names = router.config.expert_names[-1:] + router.config.expert_names[:-1]
        with torch.no_grad():  # keep the routing head's rows in the same (rotated) expert order
            router.routing_head.weight.copy_(torch.roll(router.routing_head.weight, 1, dims=0))
        args.patterns = ["trained"]
        print(f"trained world {args.world}: prompts from {args.domain or 'all five benchmarks, interleaved'}")
    else:
        base = tiny_llama(0, args)
        router = ScheduledRouter(base, RouterConfig([f"e{i}" for i in range(N_EXPERTS)], args.hidden))
        experts = [tiny_llama(s, args) for s in range(1, 1 + N_EXPERTS)]
    counter = Counter(router, experts)
    g = torch.Generator().manual_seed(0)
    shape = experts[0].config
    print(
        f"models: Llama hidden {shape.hidden_size}, {shape.num_hidden_layers} layers, vocab {shape.vocab_size}, float32; "
        f"router + {N_EXPERTS} experts; {args.new_tokens} new tokens; {torch.get_num_threads()} threads; "
        f"{args.clock} clock, best of {args.repeats}"
    )
    print(
        "fwd/tok: model forwards per emitted token (per row); calls/step: model calls per decode step "
        "(batch level); exp-tok/tok: row-tokens the experts process (padding included) per emitted token"
    )
    header = (
        f"{'batch':>5} {'pattern':>7} {'method':>7} {'tok/s':>9} {'fwd/tok':>8} {'calls/step':>10} "
        f"{'exp-tok/tok':>11} {'switch%':>8}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for batch in args.batches:
        if args.world:
            prompts = prompt_pool[:batch]
            lens = [len(p) for p in prompts]
        else:
            lens = [24] if batch == 1 else torch.randint(16, 33, (batch,), generator=g).tolist()
            prompts = [torch.randint(3, args.vocab, (n,), generator=g).tolist() for n in lens]
        n_tok, steps = batch * args.new_tokens, args.new_tokens
        common = dict(max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)
        schedules = {p: make_schedule(p, batch, max(lens) + args.new_tokens + 1, seed=batch)
                     for p in args.patterns if p != "trained"}

        def with_schedule(fn, pattern):
            def go():
                if pattern != "trained":
                    router.schedule = schedules[pattern]
                return fn(router, experts, prompts, **common)

            return go

        def hf_generate():
            width = max(lens)
            ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            return experts[0].generate(
                ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0
            )

        fns = {
            ("single", "-"): lambda: greedy_generate(experts[0], prompts, **common),
            ("hf-gen", "-"): hf_generate,
        }
        for pattern in args.patterns:
            fns[("fused", pattern)] = with_schedule(fused_generate, pattern)
            fns[("naive", pattern)] = with_schedule(naive_fused_generate, pattern)
        for fn in fns.values():  # warm-up
            fn()
        timing = best_of(fns, args.repeats, clock)
        t_single = timing[("single", "-")][0]
        single_tokens = timing[("single", "-")][1]
        hf_tokens = timing[("hf-gen", "-")][1][:, max(lens) :].tolist()
        # min_new_tokens makes transformers mask EOS, which a trained model may well prefer: compare
        # the two up to the first EOS only
        eos = experts[0].config.eos_token_id
        ends = [r.index(eos) if eos in r else len(r) for r in single_tokens]
        same = all(a[:k] == b[:k] for a, b, k in zip(single_tokens, hf_tokens, ends))
        assert same or batch > 1, "greedy_generate != transformers generate"
        for (name, pattern), (t, outs) in timing.items():
            n_calls, e_tokens = counter.measure(fns[(name, pattern)])
            if name in ("single", "hf-gen"):
                fwd, switch_col = 1.0, "-"
            else:
                assert [o.token_ids for o in outs] == [o.token_ids for o in timing[("fused", pattern)][1]]
                fwd = sum(o.forwards for o in outs) / n_tok
                ids = [o.expert_ids for o in outs]
                switches = sum(a != b for row in ids for a, b in zip(row, row[1:])) / sum(len(r) - 1 for r in ids)
                switch_col = f"{100 * switches:.0f}%"
            print(
                f"{batch:>5} {pattern:>7} {name:>7} {n_tok / t:>9.1f} {fwd:>8.2f} {n_calls / steps:>10.2f} "
                f"{e_tokens / n_tok:>11.2f} {switch_col:>8}"
            )
        for pattern in args.patterns:
            t_fused, t_naive = timing[("fused", pattern)][0], timing[("naive", pattern)][0]
            results.append(
                dict(
                    batch=batch,
                    pattern=pattern,
                    single_tok_s=n_tok / t_single,
                    hf_generate_tok_s=n_tok / timing[("hf-gen", "-")][0],
                    fused_tok_s=n_tok / t_fused,
                    naive_tok_s=n_tok / t_naive,
                    fused_over_single=t_single / t_fused,
                    fused_over_naive=t_naive / t_fused,
                )
            )
    print()
    print(f"{'batch':>5} {'pattern':>7} {'fused/single':>13} {'fused/naive':>12}   (targets: >= 0.4, >= 1.5)")
    for r in results:
        print(f"{r['batch']:>5} {r['pattern']:>7} {r['fused_over_single']:>13.2f} {r['fused_over_naive']:>12.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), results=results), f, indent=2)


if __name__ == "__main__":
    main()

"""Trains a tiny LM (plain SFT) or router (mix training: SFT + CDPO) with the project's loop and
saves it; run once as a single process and once under `torchrun --nproc_per_node 2` (gloo, CPU)
by tests/test_training.py, which checks both produce the same weights.

    python tests/distributed_worker.py {lm|mix|mix_budget} TOKENIZER_DIR INIT_DIR OUT_DIR MICRO_BATCH

mix_budget: samples of varied lengths, a token budget that cuts the processes' micro-batches into
different numbers of pieces (the loop equalises them), and the reference log-probs through
`stored_reference` (each process computes its share; saved as OUT_DIR.ref_logprobs.pt).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fusionroute.data import encode_pair  # noqa: E402
from fusionroute.models import load_tokenizer  # noqa: E402
from fusionroute.router import RouterModel  # noqa: E402
from fusionroute.scaling import process_device, save_trained  # noqa: E402
from fusionroute.trainers import (  # noqa: E402
    MixConfig,
    PreferencePair,
    mix_train,
    preference_reference,
    stored_reference,
    train_lm,
)
from fusionroute.training import OptimConfig  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

TEMPLATE = "### Instruction:\n{}\n\n### Response:\n"


def samples(tokenizer, n: int, varied: bool = False) -> list:
    tail = (lambda i: " so" * (i % 7)) if varied else (lambda i: "")
    return [encode_pair(tokenizer, TEMPLATE.format(f"Add {i} and {i % 5}."), f"{i} + {i % 5} = {i + i % 5}" + tail(i), 64)
            for i in range(n)]


def fake_features(encoded, n_experts: int = 3) -> list[dict]:
    """Seeded stand-ins for expert features (their values do not matter here, only that both
    runs see the same ones)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for e in encoded:
        n = sum(1 for label in e.labels if label != -100)
        out.append({"gold": -torch.rand(n, n_experts, generator=g) * 3,
                    "argmax": torch.randint(0, 50, (n, n_experts), generator=g, dtype=torch.int32)})
    return out


def main(mode: str, tokenizer_dir: str, init_dir: str, out_dir: str, micro: int) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    budget = mode == "mix_budget"
    # seed 6 + 140 tokens: batches with preference pairs, and a step where the two processes'
    # micro-batches need different numbers of pieces (1 vs 2) and the loop must equalise them
    cfg = OptimConfig(steps=4, batch_size=8, micro_batch_size=micro, lr=5e-3, seed=6 if budget else 0,
                      max_tokens_per_micro_batch=140 if budget else 0)
    lm = AutoModelForCausalLM.from_pretrained(init_dir)
    data = samples(tokenizer, 16, varied=budget)
    if mode == "lm":
        result = train_lm(lm, data, cfg, tokenizer.pad_token_id, "dist lm")
        save_trained(result.modules["model"], out_dir)
        return
    router = RouterModel.from_lm(lm, ["a", "b", "c"], seed=0)
    wrong = samples(tokenizer, 24, varied=budget)[16:]
    pairs = [PreferencePair(good, bad) for good, bad in zip(data[:8], wrong)]
    if budget:
        def load_reference():
            reference = AutoModelForCausalLM.from_pretrained(init_dir)
            return RouterModel.from_lm(reference, ["a", "b", "c"], seed=0).to(process_device("cpu"))

        frozen = stored_reference(out_dir + ".ref_logprobs.pt", load_reference, pairs, tokenizer.pad_token_id, 0.1,
                                  batch_size=3, max_tokens=140)
    else:
        frozen = preference_reference(router, pairs, tokenizer.pad_token_id, 0.1)
    result = mix_train(router, data, fake_features(data), pairs, frozen, cfg, MixConfig(), tokenizer.pad_token_id, "dist mix")
    save_trained(result.modules["policy"], out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))

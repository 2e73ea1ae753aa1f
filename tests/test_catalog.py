"""The method catalogue as data (config/methods.yaml, fusionroute/catalog.py): the rows it gives,
and bad entries stopping before any job with the key and the allowed values."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusionroute.catalog import (CATALOG_FILE, CatalogError, check_config, family_methods, format_settings, load_catalog,
                                 parse_settings, previous_stage_ref, read_yaml, stage_settings, tables_with_sweeps)

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())

# The rows as the workflow defined them in code before the catalogue became data.
BEFORE = {
    "sequence_selection": ("sequence_selection", {"experts": "experts", "reward_model": "reward_model"},
                           "Sequence Selection", "Collaboration Approaches"),
    "collab": ("collab", {"experts": "experts", "reward_model": "reward_model"}, "Collab", "Collaboration Approaches"),
    "finetuned": ("single", {"model": "finetuned"}, "Fine-tuned Model", "Collaboration Approaches"),
    "dare": ("single", {"model": "merge:dare"}, "DARE", "Collaboration Approaches"),
    "task_arithmetic": ("single", {"model": "merge:task_arithmetic"}, "TaskArithmetic", "Collaboration Approaches"),
    "fusionroute": ("fusionroute", {"router": "router", "experts": "experts"}, "FusionRoute", "Ours"),
    "fusionroute_routing_only": ("fusionroute", {"router": "router_sft", "experts": "experts"},
                                 "FusionRoute w/o complementary logits", "Ablation"),
    "base": ("single", {"model": "base"}, "Base", "Ablation"),
    "fusionroute_sft": ("fusionroute", {"router": "router_sft", "experts": "experts"}, "FusionRoute (SFT only)",
                        "Ablation"),
}


def _methods(config: dict, family: str | None = None) -> dict[str, dict]:
    family = family or next(iter(config["families"]))
    return family_methods(load_catalog(extra_kinds=config.get("method_kinds")), config, family)


def test_catalogue_rows_equal_the_former_code():
    for config in (TINY, PAPER):
        for family in config["families"]:
            methods = _methods(config, family)
            experts = config["families"][family]["experts"]
            assert list(methods) == [*experts, *BEFORE]
            for e in experts:
                assert methods[e] == {"kind": "single", "models": {"model": e}, "params": {},
                                      "label": f"{e.capitalize()} Expert", "group": "Expert Models",
                                      "module": "fusionroute.methods"}
            for name, (kind, models, label, group) in BEFORE.items():
                spec = methods[name]
                assert (spec["kind"], spec["models"], spec["label"], spec["group"]) == (kind, models, label, group)
            assert methods["collab"]["params"] == {k: v for k, v in config["collab"].items() if k != "limit"}
            assert methods["fusionroute"]["params"] == {"use_complementary": True}
            assert methods["fusionroute_routing_only"]["params"] == {"use_complementary": False}
            check_config(config, load_catalog())


def test_catalogue_kinds_are_the_registered_generators():
    from fusionroute.generation import method_kinds

    assert method_kinds() == sorted(load_catalog()["kinds"])


def _with_custom(**methods) -> dict:
    config = copy.deepcopy(TINY)
    config["custom_methods"] = methods
    return config


@pytest.mark.parametrize("entry,message", [
    ({"kind": "collab", "models": {"experts": "experts", "reward_model": "reward_model"}, "lable": "X"},
     "custom_methods.my.*'lable' was unexpected.*allowed keys: group, kind, label, models, params, params_from"),
    ({"kind": "colab", "models": {"experts": "experts"}},
     "custom_methods.my.kind: unknown kind 'colab'; allowed: collab, fusionroute, sequence_selection, single"),
    ({"kind": "single", "models": {"model": "finetune"}},
     "my.models.model: unknown model reference 'finetune'; allowed: experts, base, router, .*merge:dare"),
    ({"kind": "single"}, "custom_methods.my: 'models' is a required property"),
    ({"kind": "single", "models": {"model": "base"}, "params": {}, "params_from": "collab"},
     "custom_methods.my: .* should not be valid"),
])
def test_bad_custom_method_is_refused(entry, message):
    with pytest.raises(CatalogError, match=message):
        _methods(_with_custom(my=entry))


def test_custom_method_may_not_redefine_a_row():
    with pytest.raises(CatalogError, match="custom_methods.fusionroute: 'fusionroute' is already a method"):
        _methods(_with_custom(fusionroute={"kind": "single", "models": {"model": "base"}}))


def test_custom_kind_needs_its_module():
    entry = {"kind": "mine", "models": {"model": "base"}, "label": "Mine"}
    with pytest.raises(CatalogError, match="unknown kind 'mine'.*method_kinds"):
        _methods(_with_custom(my=entry))
    config = {**_with_custom(my=entry), "method_kinds": {"mine": "mypackage.generators"}}
    assert _methods(config)["my"] == {"kind": "mine", "models": {"model": "base"}, "params": {}, "label": "Mine",
                                      "group": "Other", "module": "mypackage.generators"}


def test_table_naming_an_unknown_method_is_refused():
    config = copy.deepcopy(TINY)
    config["tables"]["table1"] = [*config["tables"]["table1"], "fusionrout"]
    with pytest.raises(CatalogError, match="tables.table1: unknown method 'fusionrout'"):
        check_config(config, load_catalog())


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "methods.yaml"
    bad.write_text(CATALOG_FILE.read_text().replace("  collab:\n    kind: collab", "  collab:\n    kind: [collab"))
    with pytest.raises(CatalogError, match=rf"{bad}:\d+:\d+: YAML syntax error"):
        read_yaml(bad)


def test_workflow_stops_before_any_job(tmp_path):
    """A dry run with a misspelt key in a config overlay fails at parse time, naming it."""
    sys.path.insert(0, str(Path(__file__).parent))
    from workflow_helpers import SNAKEMAKE, copy_workflow

    work = copy_workflow(tmp_path / "wf")
    overlay = tmp_path / "sweep.yaml"
    overlay.write_text(yaml.safe_dump({"custom_methods": {"collab_w10": {
        "kind": "collab", "models": {"experts": "experts", "reward_model": "reward_model"},
        "params": {"top_k": 2, "lookahead": 3, "weight": 10.0}, "lable": "Collab (w=10)"}}}))
    result = subprocess.run(SNAKEMAKE + ["-n", "results/table1.tex", "--configfile", "config/tiny.yaml", str(overlay)],
                            cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "method catalogue: custom_methods.collab_w10" in out and "'lable' was unexpected" in out, out[-3000:]
    assert "Job stats" not in out
    overlay.write_text(overlay.read_text().replace("lable", "label"))
    ok = subprocess.run(SNAKEMAKE + ["-n", "results/tiny/tiny/collab_w10/gsm8k/scores.json", "--configfile",
                                     "config/tiny.yaml", str(overlay)], cwd=work, capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]


def test_config_yaml_syntax_error_names_file_and_line_before_snakemake(tmp_path):
    """`./run snakemake ...` reads the --configfile files first: Snakemake's own message names
    neither the file nor the line."""
    from fusionroute.configcheck import config_files

    assert config_files(["-n", "results/table1.tex", "--configfile", "a.yaml", "b.yaml", "--cores", "2"]) == \
        ["a.yaml", "b.yaml"]
    assert config_files(["--configfile=a.yaml", "target"]) == ["a.yaml"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("fusionroute:\n  sft: {steps: 4, batch_size: [8\n")
    result = subprocess.run([str(REPO / "run"), "snakemake", "-n", "results/table1.tex", "--configfile",
                             "config/tiny.yaml", str(bad)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"config error: {bad}:3:1: YAML syntax error" in result.stderr, result.stderr[-2000:]
    assert "Building DAG" not in result.stdout + result.stderr  # stopped before Snakemake started


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["families"]["tiny"].update(router_init="instruction"),
     "families.tiny.router_init: 'instruction' is not one of the family's experts; allowed: math, code, instruct"),
])
def test_family_settings_are_checked(edit, message):
    config = copy.deepcopy(TINY)
    edit(config)
    with pytest.raises(CatalogError, match=message):
        check_config(config, load_catalog())


def test_hub_family_expert_sources_must_match_its_experts():
    config = copy.deepcopy(PAPER)
    del config["families"]["gemma2"]["expert_sources"]["coding"]
    with pytest.raises(CatalogError, match=r"families.gemma2.expert_sources: .*missing \['coding'\]"):
        check_config(config, load_catalog())


# ---- sweeps: a method at other settings, as rows of their own ----------------------------------
def _with_sweeps(sweeps: dict, **custom) -> dict:
    config = copy.deepcopy(TINY)
    config["sweeps"] = sweeps
    if custom:
        config["custom_methods"] = custom
    return config


def test_sweep_rows_name_their_settings_and_retrain_only_what_they_change():
    config = _with_sweeps({"fusionroute": {"mix.beta": [0.1, 0.5]}, "collab": {"params.weight": [1.0, 4]}})
    methods = _methods(config)
    # beta 0.1 is tiny.yaml's own: that row is `fusionroute` itself (its cells are reused), relabelled
    assert "fusionroute@mix.beta~0.1" not in methods
    assert methods["fusionroute"]["label"] == "FusionRoute (mix.beta=0.1)"
    assert methods["fusionroute"]["models"]["router"] == "router"
    variant = methods["fusionroute@mix.beta~0.5"]
    assert variant["models"] == {"router": "router@mix.beta~0.5", "experts": "experts"}
    assert variant["label"] == "FusionRoute (mix.beta=0.5)" and variant["group"] == "Ours"
    # a generation setting changes params only; the models stay the stored ones
    collab = methods["collab@params.weight~4"]
    assert collab["params"]["weight"] == 4 and collab["models"] == methods["collab"]["models"]
    tables = tables_with_sweeps(config, methods)
    assert tables["table1"][-2:] == ["fusionroute", "fusionroute@mix.beta~0.5"]
    assert tables["table2"] == ["collab", "collab@params.weight~4", "fusionroute_routing_only", "fusionroute",
                                "fusionroute@mix.beta~0.5"]


def test_a_variant_model_trains_from_the_right_previous_stage():
    assert stage_settings(TINY, "router@mix.beta~0.5", "mix")["beta"] == 0.5
    assert stage_settings(TINY, "router@mix.beta~0.5", "sft") == TINY["fusionroute"]["sft"]
    assert stage_settings(TINY, "router_sft@sft.lr~0.002", "sft")["lr"] == 0.002
    assert previous_stage_ref("router@mix.beta~0.5") == "router_sft"
    assert previous_stage_ref("router@mix.beta~0.5,sft.lr~0.002") == "router_sft@sft.lr~0.002"
    assert previous_stage_ref("finetuned@mix.lam~1") == "finetuned_sft"
    assert stage_settings(TINY, "finetuned@mix.lam~1", "mix")["lam"] == 1
    assert parse_settings(format_settings({"mix.beta": 0.5, "sft.steps": 10})) == {"mix.beta": 0.5, "sft.steps": 10}


def test_a_sweep_and_a_custom_method_use_the_same_variant_model():
    custom = {"kind": "fusionroute", "models": {"router": "router@mix.beta~0.5", "experts": "experts"},
              "params": {"use_complementary": False}, "label": "Routing only, beta 0.5"}
    methods = _methods(_with_sweeps({"fusionroute": {"mix.beta": [0.5]}}, mine=custom))
    assert methods["mine"]["models"]["router"] == methods["fusionroute@mix.beta~0.5"]["models"]["router"]


@pytest.mark.parametrize("sweeps,message", [
    ({"fusionroutee": {"mix.beta": [0.5]}}, "sweeps.fusionroutee: unknown method 'fusionroutee'; known: math"),
    ({"fusionroute": {"mix.betta": [0.5]}}, "sweeps.fusionroute.mix.betta: 'betta' is not a key of fusionroute.mix; "
                                            "allowed: .*mix.beta"),
    ({"fusionroute": {"params.top_k": [2]}}, "'top_k' is not a setting of this method; allowed: params.use_complementary"),
    ({"fusionroute_routing_only": {"mix.beta": [0.5]}}, "cannot vary 'mix.beta' for this method; allowed: "
                                                        "params.<setting>, sft.<key>"),
    ({"math": {"sft.lr": [0.1]}}, "cannot vary 'sft.lr' for this method; allowed: params.<setting>$"),
    ({"fusionroute": {"mix.beta": [-1.0]}}, r"fusionroute.mix.beta: -1.0 is less than or equal to the minimum of 0 "
                                            r"\(in the settings of 'router@mix.beta~-1.0'\)"),
    ({"fusionroute": {"sft.reading": ["a b"]}}, "sweep value 'a b': only letters, digits"),
])
def test_bad_sweep_is_refused_naming_the_key(sweeps, message):
    with pytest.raises(CatalogError, match=message):
        _methods(_with_sweeps(sweeps))


def test_a_variant_reference_to_a_stage_the_model_lacks_is_refused():
    custom = {"kind": "fusionroute", "models": {"router": "router_sft@mix.beta~0.5", "experts": "experts"}}
    with pytest.raises(CatalogError, match="varies 'mix.beta', which 'router_sft' is not trained with; allowed stages: sft"):
        _methods(_with_sweeps({}, mine=custom))

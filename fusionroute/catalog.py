"""The method catalogue: which methods a table row can name, as data (config/methods.yaml).

One home for a method's identity (kind, models, params, label, group), read by the workflow (rows,
cells, generate steps), the planner and the figures alike. A config's `custom_methods` are checked
here when the workflow is parsed, so a typo (`lable`) or an unknown kind stops the run before any
job, naming the key and the allowed values. Plain Python and YAML: no torch import.
"""
from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CATALOG_FILE = REPO / "config" / "methods.yaml"
SCHEMA_FILE = REPO / "workflow" / "schemas" / "methods.schema.yaml"
CONFIG_SCHEMA_FILE = REPO / "workflow" / "schemas" / "config.schema.yaml"
BUILT_MODEL_REFS = ("experts", "base", "router", "router_sft", "finetuned", "finetuned_sft", "reward_model")
MERGE_PREFIX = "merge:"
# Trained models a sweep can retrain with other settings: ref -> (config section, its stages).
# A stage's model is trained from the previous stage's, so `router` depends on sft and mix settings.
TRAINED_REFS = {"router_sft": ("fusionroute", ("sft",)), "router": ("fusionroute", ("sft", "mix")),
                "finetuned_sft": ("finetuned", ("sft",)), "finetuned": ("finetuned", ("sft", "mix"))}
PREVIOUS_STAGE = {"router": "router_sft", "finetuned": "finetuned_sft"}
VARIANT_MARK = "@"     # <method or model>@<key>~<value>,...: Paramspace's key~value naming, one path segment
_VALUE_CHARS = re.compile(r"^[A-Za-z0-9_.+-]+$")


class CatalogError(ValueError):
    """A method entry (catalogue or custom_methods) that cannot be built; says which key and why."""


def read_yaml(path: str | Path) -> Any:
    """YAML with the file, line and column in the error (yaml's own message has neither file)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise CatalogError(f"{where}: YAML syntax error: {problem}") from None


def _schema() -> dict:
    return read_yaml(SCHEMA_FILE)


def _validate(instance: Any, schema: dict, where: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path)
        allowed = ""
        if err.validator == "additionalProperties":
            allowed = f" (allowed keys: {', '.join(sorted(err.schema.get('properties', {})))})"
        raise CatalogError(f"{where}{'.' + key if key else ''}: {err.message}{allowed}")


def load_catalog(path: str | Path = CATALOG_FILE, extra_kinds: dict[str, str] | None = None) -> dict:
    """The catalogue file, validated; `extra_kinds` (a config's `method_kinds`) adds kinds."""
    catalog = read_yaml(path)
    _validate(catalog, _schema(), str(path))
    catalog["kinds"] = {**catalog["kinds"], **(extra_kinds or {})}
    for name, spec in [("expert", catalog["expert"]), *catalog["methods"].items()]:
        _check_kind(spec, catalog["kinds"], f"{path}: methods.{name}")
    return catalog


def _check_kind(spec: dict, kinds: dict[str, str], where: str) -> None:
    if spec["kind"] not in kinds:
        raise CatalogError(f"{where}.kind: unknown kind {spec['kind']!r}; allowed: {', '.join(sorted(kinds))} "
                           f"(a new kind is registered with @register_method and named, with its module, "
                           f"under `method_kinds` in the config)")


def check_model_ref(ref: str, experts: list[str], merges: list[str], where: str) -> None:
    if ref in BUILT_MODEL_REFS or ref in experts:
        return
    base, _, settings = ref.partition(VARIANT_MARK)
    if settings and base in TRAINED_REFS:
        stages = TRAINED_REFS[base][1]
        for key in parse_settings(settings, where):
            if key.split(".", 1)[0] not in stages:
                raise CatalogError(f"{where}: {ref!r} varies {key!r}, which {base!r} is not trained with; "
                                   f"allowed stages: {', '.join(stages)}")
        return
    if ref.startswith(MERGE_PREFIX) and ref[len(MERGE_PREFIX):] in merges:
        return
    allowed = [*BUILT_MODEL_REFS, *experts, *(MERGE_PREFIX + m for m in merges)]
    raise CatalogError(f"{where}: unknown model reference {ref!r}; allowed: {', '.join(allowed)}")


def _params(spec: dict, config: dict) -> dict:
    if "params_from" in spec:
        section = config.get(spec["params_from"])
        if not isinstance(section, dict):
            raise CatalogError(f"params_from: {spec['params_from']!r} is not a section of the config")
        return {k: v for k, v in section.items() if k != "limit"}
    return dict(spec.get("params") or {})


def family_methods(catalog: dict, config: dict, family: str) -> dict[str, dict]:
    """name -> {kind, models, params, label, group, module} for one family: its experts, the
    catalogue's methods, then the config's custom_methods (checked; they may not redefine a name)."""
    experts = list(config["families"][family]["experts"])
    merges = list(config.get("merges") or {})
    template = catalog["expert"]
    out = {
        e: {"kind": template["kind"],
            "models": {k: v.replace("{expert}", e) for k, v in template["models"].items()},
            "params": _params(template, config),
            "label": template["label"].replace("{Expert}", e.capitalize()).replace("{expert}", e),
            "group": template["group"]}
        for e in experts
    }
    for name, spec in catalog["methods"].items():
        out[name] = {"kind": spec["kind"], "models": dict(spec["models"]), "params": _params(spec, config),
                     "label": spec.get("label", name), "group": spec.get("group", "Other")}
    definitions = _schema()["definitions"]
    method_schema = {**definitions["method"], "definitions": definitions}
    for name, spec in (config.get("custom_methods") or {}).items():
        where = f"custom_methods.{name}"
        if not isinstance(spec, dict):
            raise CatalogError(f"{where}: expected a mapping {{kind, models, params, label, group}}, got {spec!r}")
        _validate(spec, method_schema, where)
        if name in out:
            raise CatalogError(f"{where}: {name!r} is already a method (an expert or config/methods.yaml); "
                               f"give the variant a name of its own")
        _check_kind(spec, catalog["kinds"], where)
        out[name] = {"kind": spec["kind"], "models": dict(spec["models"]), "params": _params(spec, config),
                     "label": spec.get("label", name), "group": spec.get("group", "Other")}
    out = {**out, **sweep_methods(out, config)}
    for name, spec in out.items():
        for key, ref in spec["models"].items():
            check_model_ref(ref, experts, merges, f"{name}.models.{key}")
        spec["module"] = catalog["kinds"][spec["kind"]]
    return out


# ---- sweeps: a method at other settings, as rows of their own --------------------------------------
def format_settings(overrides: dict[str, Any]) -> str:
    """{"mix.beta": 0.5} -> "mix.beta~0.5": sorted key~value pairs, the part of a name after '@'."""
    return ",".join(f"{key}~{_format_value(value)}" for key, value in sorted(overrides.items()))


def _format_value(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if not _VALUE_CHARS.match(text):
        raise CatalogError(f"sweep value {value!r}: only letters, digits and _.+- can name a path")
    return text


def parse_settings(settings: str, where: str = "settings") -> dict[str, Any]:
    """The inverse of format_settings; values read as YAML scalars (0.5 -> float, 400 -> int)."""
    out = {}
    for part in settings.split(","):
        key, sep, text = part.partition("~")
        if not sep or not key or not text:
            raise CatalogError(f"{where}: {settings!r} is not key~value[,key~value...]")
        out[key] = yaml.safe_load(text)
    return out


def stage_settings(config: dict, ref: str, stage: str) -> dict:
    """The settings a trained model reference (router, router@mix.beta~0.5, ...) is trained with
    at `stage` (sft or mix): the config's section with the reference's overrides of that stage."""
    base, _, settings = ref.partition(VARIANT_MARK)
    section = TRAINED_REFS[base][0]
    values = dict(config[section][stage])
    for key, value in (parse_settings(settings) if settings else {}).items():
        if key.split(".", 1)[0] == stage:
            values[key.split(".", 1)[1]] = value
    return values


def previous_stage_ref(ref: str) -> str:
    """router@sft.lr~0.002,mix.beta~0.5 -> router_sft@sft.lr~0.002; router@mix.beta~0.5 -> router_sft."""
    base, _, settings = ref.partition(VARIANT_MARK)
    previous = PREVIOUS_STAGE[base]
    kept = {k: v for k, v in (parse_settings(settings) if settings else {}).items() if k.startswith("sft.")}
    return f"{previous}{VARIANT_MARK}{format_settings(kept)}" if kept else previous


def sweep_methods(methods: dict[str, dict], config: dict) -> dict[str, dict]:
    """config `sweeps: {method: {key: [values]}}` -> one row per combination of values, named
    <method>@<key>~<value>,...; keys are `params.<p>` (the generator's settings) or `sft.<k>` /
    `mix.<k>` (the training of the router or fine-tuned model it decodes with; those models are
    retrained under build/<world>/<family>/variants/). A combination equal to the config's own
    settings is the method itself: its cells are reused, only its label names the setting."""
    out: dict[str, dict] = {}
    for name, grid in (config.get("sweeps") or {}).items():
        where = f"sweeps.{name}"
        if name not in methods:
            raise CatalogError(f"{where}: unknown method {name!r}; known: {', '.join(methods)}")
        base = methods[name]
        base_label = base["label"]
        keys = sorted(grid)
        for key in keys:
            _check_sweep_key(base, key, config, f"{where}.{key}")
        for values in itertools.product(*(grid[k] for k in keys)):
            overrides = dict(zip(keys, values))
            variant = _variant(base, overrides, config, where)
            label = f"{base_label} ({', '.join(f'{k}={_format_value(v)}' for k, v in overrides.items())})"
            if variant is None:                  # the config's own settings: the base row, relabelled
                base["label"] = label
                continue
            out[f"{name}{VARIANT_MARK}{format_settings(overrides)}"] = {**variant, "label": label}
    return out


def _trained_refs(spec: dict) -> list[str]:
    return [ref for ref in spec["models"].values() if ref in TRAINED_REFS]


def _check_sweep_key(spec: dict, key: str, config: dict, where: str) -> None:
    group, _, field = key.partition(".")
    if group == "params" and field:
        if field not in spec["params"]:
            raise CatalogError(f"{where}: {field!r} is not a setting of this method; allowed: "
                               f"{', '.join('params.' + p for p in spec['params']) or '(none)'}")
        return
    stages = sorted({s for ref in _trained_refs(spec) for s in TRAINED_REFS[ref][1]})
    sections = {TRAINED_REFS[ref][0] for ref in _trained_refs(spec)}
    if group in stages and field:
        known = {k for section in sections for k in _stage_keys(section, group)}
        if field in known:
            return
        raise CatalogError(f"{where}: {field!r} is not a key of {'/'.join(sorted(sections))}.{group}; "
                           f"allowed: {', '.join(sorted(group + '.' + k for k in known))}")
    allowed = ["params.<setting>", *(f"{s}.<key>" for s in stages)]
    raise CatalogError(f"{where}: cannot vary {key!r} for this method; allowed: {', '.join(allowed)}")


@functools.lru_cache(maxsize=1)
def _config_schema() -> dict:
    return read_yaml(CONFIG_SCHEMA_FILE)


def _stage_keys(section: str, stage: str) -> list[str]:
    """The keys the config schema allows in `section.stage` (set in the config or not)."""
    schema = _config_schema()
    node = schema["properties"][section]["properties"][stage]
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return list(node["properties"])


def _variant(spec: dict, overrides: dict[str, Any], config: dict, where: str) -> dict | None:
    """The method at `overrides`, or None when they equal its own settings."""
    params = dict(spec["params"])
    trained: dict[str, Any] = {}
    for key, value in overrides.items():
        group, _, field = key.partition(".")
        if group == "params":
            params[field] = value
        else:
            trained[key] = value
    models = dict(spec["models"])
    for role, ref in spec["models"].items():
        if ref not in TRAINED_REFS:
            continue
        section, stages = TRAINED_REFS[ref]
        own = {k: v for k, v in trained.items() if k.split(".", 1)[0] in stages
               and config[section][k.split(".", 1)[0]].get(k.split(".", 1)[1]) != v}
        if own:
            models[role] = f"{ref}{VARIANT_MARK}{format_settings(own)}"
            _check_trained_settings(config, models[role], where)
    if params == spec["params"] and models == spec["models"]:
        return None
    return {**spec, "params": params, "models": models}


def _check_trained_settings(config: dict, ref: str, where: str) -> None:
    """The overridden section must still satisfy the config schema (a negative beta stops here)."""
    base = ref.partition(VARIANT_MARK)[0]
    section, stages = TRAINED_REFS[base]
    changed = {**config, section: {**config[section], **{s: stage_settings(config, ref, s) for s in stages}}}
    try:
        _validate(changed, _config_schema(), where)
    except CatalogError as err:
        raise CatalogError(f"{err} (in the settings of {ref!r})") from None


def tables_with_sweeps(config: dict, methods: dict[str, dict]) -> dict[str, list[str]]:
    """The config's tables, each sweep row (a name in `methods`, one family's) right after the
    method it varies."""
    tables = {}
    for table, rows in (config.get("tables") or {}).items():
        out = []
        for name in rows:
            out.append(name)
            out += [m for m in methods if m.partition(VARIANT_MARK)[0] == name and m != name]
        tables[table] = out
    return tables


def check_config(config: dict, catalog: dict) -> dict[str, dict[str, dict]]:
    """Everything the config names: each family's methods, and every table and figure row.
    Returns each family's methods (family_methods), checked."""
    families = list(config["families"])
    checked = {}
    for family in families:
        spec = config["families"][family]
        experts = list(spec["experts"])
        if spec.get("router_init") not in experts:
            raise CatalogError(f"families.{family}.router_init: {spec.get('router_init')!r} is not one of the family's "
                               f"experts; allowed: {', '.join(experts)}")
        if spec.get("source") == "hub":
            sources = set(spec.get("expert_sources") or {})
            if sources != set(experts):
                raise CatalogError(f"families.{family}.expert_sources: must name exactly the experts {experts}; "
                                   f"missing {sorted(set(experts) - sources)}, unknown {sorted(sources - set(experts))}")
        methods = checked[family] = family_methods(catalog, config, family)
        named = [(f"tables.{t}", m) for t, rows in (config.get("tables") or {}).items() for m in rows]
        judge = config.get("judge") or {}
        named += [(f"judge.figures.{f}", m) for f, rows in (judge.get("figures") or {}).items() for m in rows]
        if judge.get("against"):
            named.append(("judge.against", judge["against"]))
        for where, name in named:
            if name not in methods:
                raise CatalogError(f"{where}: unknown method {name!r} (family {family}); known: "
                                   f"{', '.join(methods)}")
    return checked

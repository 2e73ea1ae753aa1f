"""The method catalogue: which methods a table row can name, as data (config/methods.yaml).

One home for a method's identity (kind, models, params, label, group), read by the workflow (rows,
cells, generate steps), the planner and the figures alike. A config's `custom_methods` are checked
here when the workflow is parsed, so a typo (`lable`) or an unknown kind stops the run before any
job, naming the key and the allowed values. Plain Python and YAML: no torch import.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CATALOG_FILE = REPO / "config" / "methods.yaml"
SCHEMA_FILE = REPO / "workflow" / "schemas" / "methods.schema.yaml"
BUILT_MODEL_REFS = ("experts", "base", "router", "router_sft", "finetuned", "finetuned_sft", "reward_model")
MERGE_PREFIX = "merge:"


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
    for name, spec in out.items():
        for key, ref in spec["models"].items():
            check_model_ref(ref, experts, merges, f"{name}.models.{key}")
        spec["module"] = catalog["kinds"][spec["kind"]]
    return out


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

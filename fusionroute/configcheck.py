"""`python -m fusionroute.configcheck <snakemake arguments>`: read every --configfile given to
Snakemake and stop on a YAML syntax error with the file, line and column.

Snakemake parses config files before the workflow runs and reports only "Config file is not valid
JSON or YAML", without saying which file or where; `./run snakemake ...` calls this first. The
config's content is checked afterwards by the workflow (JSON schema, method catalogue).
"""
from __future__ import annotations

import sys

from fusionroute.catalog import CatalogError, read_yaml

FLAGS = ("--configfile", "--configfiles")


def config_files(argv: list[str]) -> list[str]:
    """The values of --configfile/--configfiles (several may follow one flag, up to the next option)."""
    files, taking = [], False
    for arg in argv:
        if arg.startswith("-"):
            name, _, value = arg.partition("=")
            taking = name in FLAGS
            if taking and value:
                files.append(value)
                taking = False
            continue
        if taking:
            files.append(arg)
    return files


def main(argv: list[str]) -> int:
    for path in config_files(argv):
        try:
            content = read_yaml(path)
        except CatalogError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 1
        if content is not None and not isinstance(content, dict):
            print(f"config error: {path}: expected a mapping of settings at the top level, got {type(content).__name__}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

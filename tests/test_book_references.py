"""Every `ssvi.…` name the book's prose points at exists (the chapters cannot rot).

The prose is the book's markdown chapters and the markdown cells of its notebooks.
"""
import importlib
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"`(ssvi(?:\.\w+)+)")


def prose() -> dict[str, str]:
    """{file: its prose}: book/*.md, and the markdown cells of notebooks/*.ipynb."""
    out = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "book").glob("*.md"))}
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(p.read_text())["cells"]
        out[str(p.relative_to(ROOT))] = "\n".join(
            "".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return out


def names_in(text: str) -> set[str]:
    return set(PATTERN.findall(text))


NAMES = sorted({n for text in prose().values() for n in names_in(text)})


def resolve(name: str):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def test_every_code_reference_in_the_prose_is_collected():
    """Each backticked `ssvi.` in the prose yields a name (an independent count), so a broken
    pattern cannot silently leave test_named_code_exists with nothing to check."""
    for path, text in prose().items():
        assert len(PATTERN.findall(text)) == text.count("`ssvi."), path
    assert names_in("see `ssvi.registry.records` and `ssvi.report`.") == {
        "ssvi.registry.records", "ssvi.report"}


@pytest.mark.parametrize("name", NAMES)
def test_named_code_exists(name):
    resolve(name)

"""Every `ssvi.…` name the book's prose points at exists (the chapters cannot rot)."""
import importlib
import pathlib
import re

import pytest

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"
NAMES = sorted({m for p in BOOK.glob("*.md") for m in re.findall(r"`(ssvi(?:\.\w+)+)", p.read_text())})


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


def test_the_book_names_code():
    assert len(NAMES) >= 5


@pytest.mark.parametrize("name", NAMES)
def test_named_code_exists(name):
    resolve(name)

"""pytest plugin for ``pytest --nbval notebooks/``: keep what nbval executed for the book build.

When ``$SSVI_NB_CACHE`` names a folder, every notebook whose cells all passed under nbval is
stored there, with the outputs nbval's kernel produced, as a Jupyter Cache record. The book build
(``execute_notebooks: cache`` in ``_config.yml``, cache ``_build/.jupyter_cache``) finds the
record by the notebook's code and renders those outputs instead of executing the notebook a
second time; a notebook that failed is not stored, so the book build executes it and shows the
error. ``scripts/test.sh`` sets the variable; ``scripts/build_book.sh`` empties the cache unless
it is called right after such an nbval run (``SSVI_BOOK_REUSE=1``), so ``make book`` always
executes every notebook against the results as they are now. Without ``$SSVI_NB_CACHE`` this
file does nothing.
"""
from __future__ import annotations

import copy
import os

_not_passed: set[str] = set()
_seconds: dict[str, float] = {}


def _notebook(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_runtest_logreport(report):
    name = _notebook(report.nodeid)
    _seconds[name] = _seconds.get(name, 0.0) + report.duration
    if report.failed or (report.when == "call" and not report.passed):
        _not_passed.add(name)


def pytest_sessionfinish(session, exitstatus):
    folder = os.environ.get("SSVI_NB_CACHE")
    if not folder:
        return
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cells_of: dict = {}
    for item in session.items:
        if hasattr(item, "test_outputs") and hasattr(item, "cell_num"):
            cells_of.setdefault(item.parent, []).append(item)
    cache = get_cache(folder)
    for parent, items in cells_of.items():
        nb = copy.deepcopy(parent.nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        if (_notebook(items[0].nodeid) in _not_passed or len(items) != len(code)
                or any(i.test_outputs is None for i in items)):
            continue
        for count, (cell, item) in enumerate(zip(code, items), 1):
            cell.outputs = [copy.deepcopy(o) for o in item.test_outputs]
            for o in cell.outputs:
                if o.get("output_type") == "execute_result":
                    o["execution_count"] = count
            cell.execution_count = count
        cache.cache_notebook_bundle(
            CacheBundleIn(nb, str(parent.fspath),
                          data={"execution_seconds": _seconds.get(_notebook(items[0].nodeid))}),
            check_validity=False, overwrite=True)

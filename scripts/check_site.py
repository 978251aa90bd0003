#!/usr/bin/env python3
"""Check the built book in a headless browser.

    python scripts/check_site.py [--build _build/html] [--toc _toc.yml] [--jobs 2]

For every page listed in ``_toc.yml`` it loads ``_build/html/<page>.html`` in headless Chromium
(after MathJax has run), saves a screenshot to ``_build/screenshots/<page>.png`` and checks that

* the page rendered: a non-empty title, an ``<h1>`` and non-trivial main content;
* the math was typeset: one MathJax ``mjx-container`` per math element of the page, no MathJax
  error node, and no raw TeX (``$$``, ``\\(``, ``\\[``, ``\\begin{``, ``\\frac`` ...) left in the
  visible text;
* figures exist: every ``<img>`` points at a data URI or at a readable image file in the build,
  and a notebook page shows at least as many images as its executed notebook has image outputs;
* nothing is loaded from the internet: no script, stylesheet, image, frame or font from an
  ``http(s)://`` URL in the rendered DOM or the built CSS, and no request from the page in
  Chromium's network log (plain ``<a>`` hyperlinks are allowed);
* no uncaught JavaScript error was logged, and no notebook cell shows a Python traceback
  (except cells tagged ``raises-exception``).

Exits 0 when every check passes, 1 with a list of failures otherwise, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
    "--enable-logging=stderr", "--v=0",
)
VIRTUAL_TIME_MS = 15000   # virtual time: MathJax and the theme's scripts finish well within it
REMOTE = re.compile(r"^\s*(?:(?:https?|wss?|ftp):)?//", re.I)  # http(s)://, ws(s)://, //host
RAW_TEX = ("$$", "\\(", "\\)", "\\[", "\\]", "\\begin{", "\\end{", "\\frac", "\\mathbb",
           "\\mathrm", "\\sum", "\\sigma", "\\theta", "\\mu")
LOADING_TAGS = ("script", "link", "img", "iframe", "frame", "source", "video", "audio",
                "embed", "object", "track", "image", "use", "input")
LOADING_ATTRS = ("src", "href", "srcset", "data", "poster", "xlink:href", "background")


@dataclass
class Page:
    docname: str          # as in _toc.yml, e.g. "book/method"
    html_path: Path
    source: Path | None   # the .md / .ipynb the page was built from
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- the table of contents ------------------------------------------------------------------------
def toc_docnames(toc_path: Path) -> list[str]:
    """Every ``file`` entry of a jb-book ``_toc.yml`` (root first), in order."""
    import yaml  # PyYAML ships with jupyter-book

    toc = yaml.safe_load(toc_path.read_text())
    if not isinstance(toc, dict) or "root" not in toc:
        raise ValueError(f"{toc_path}: not a Jupyter Book table of contents (no 'root' key)")
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return [re.sub(r"\.(md|ipynb|rst)$", "", n) for n in names]


def source_of(docname: str) -> Path | None:
    for ext in (".ipynb", ".md", ".rst"):
        if (ROOT / (docname + ext)).exists():
            return ROOT / (docname + ext)
    return None


# -- HTML helpers -------------------------------------------------------------------------------------
def strip_elements(text: str, tags) -> str:
    for tag in tags:
        text = re.sub(rf"<{tag}\b.*?</{tag}\s*>", " ", text, flags=re.S | re.I)
    return text


def visible_text(fragment: str) -> str:
    fragment = strip_elements(fragment, ("script", "style", "template", "noscript",
                                         "mjx-container", "pre", "code", "textarea"))
    fragment = re.sub(r"<[^>]+>", " ", fragment)
    return re.sub(r"\s+", " ", html.unescape(fragment))


def main_content(dom: str) -> str:
    """The article of a sphinx-book-theme page (falls back to <main>, then to <body>)."""
    for pattern in (r"<article\b[^>]*bd-article[^>]*>(.*)</article>", r"<main\b[^>]*>(.*)</main>",
                    r"<body\b[^>]*>(.*)</body>"):
        m = re.search(pattern, dom, flags=re.S | re.I)
        if m:
            return m.group(1)
    return dom


def tag_attrs(tag: str) -> dict[str, str]:
    return {k.lower(): html.unescape(v1 if v1 else v2)
            for k, v1, v2 in re.findall(r'([\w:-]+)\s*=\s*(?:"([^"]*)"|\'([^\']*)\')', tag)}


def remote_loads(dom: str) -> list[str]:
    """Remote URLs in elements that load a resource (not plain <a> hyperlinks) or in CSS url()."""
    found = []
    for m in re.finditer(r"<(%s)\b[^>]*>" % "|".join(LOADING_TAGS), dom, flags=re.I):
        attrs = tag_attrs(m.group(0))
        if m.group(1).lower() == "link" and attrs.get("rel", "").lower() in ("canonical",):
            continue
        for name in LOADING_ATTRS:
            value = attrs.get(name, "")
            urls = [u.strip().split()[0] for u in value.split(",") if u.strip()] \
                if name == "srcset" else [value]
            found += [f"<{m.group(1)} {name}={u}>" for u in urls if REMOTE.match(u)]
    for m in re.finditer(r"url\(\s*['\"]?([^'\")]+)", dom, flags=re.I):
        if REMOTE.match(m.group(1)):
            found.append(f"CSS url({m.group(1)})")
    for m in re.finditer(r"@import\s+['\"]([^'\"]+)", dom, flags=re.I):
        if REMOTE.match(m.group(1)):
            found.append(f"CSS @import {m.group(1)}")
    return found


def netlog_remote_urls(path: Path) -> list[str]:
    """http(s)/ws URLs the page requested, from a Chromium --log-net-log file.

    Chromium's own background requests (update checks, time sync) carry the initiator
    'not an origin'; requests made by a page carry the page's origin and are what we report.
    """
    try:
        log = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"(network log unreadable: {exc})"]
    source_types = {v: k for k, v in log["constants"]["logSourceType"].items()}
    urls: dict[int, set[str]] = {}
    internal: set[int] = set()
    for event in log.get("events", []):
        source = event.get("source", {})
        if source_types.get(source.get("type")) != "URL_REQUEST":
            continue
        params = event.get("params") or {}
        if params.get("initiator") == "not an origin":
            internal.add(source["id"])
        url = params.get("url")
        if isinstance(url, str) and re.match(r"^(https?|wss?)://", url):
            urls.setdefault(source["id"], set()).add(url)
    return sorted({u for sid, us in urls.items() if sid not in internal for u in us})


def image_outputs(notebook: Path) -> int:
    """Number of image outputs (png, jpeg, svg) in a notebook."""
    try:
        nb = json.loads(notebook.read_text())
    except (OSError, ValueError):
        return 0
    count = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if any(k in data for k in ("image/png", "image/jpeg", "image/svg+xml")):
                count += 1
    return count


def image_file_ok(path: Path) -> str | None:
    """None when ``path`` is a readable, non-empty image; otherwise what is wrong."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty file"
    if path.suffix.lower() == ".svg":
        return None if b"<svg" in path.read_bytes()[:4096] else "not an SVG"
    try:
        from PIL import Image
        with Image.open(path) as im:
            im.verify()
            if im.size[0] == 0 or im.size[1] == 0:
                return "zero-size image"
    except ImportError:
        return None
    except Exception as exc:  # PIL raises many types on corrupt files
        return f"unreadable image ({exc.__class__.__name__})"
    return None


# -- the checks -----------------------------------------------------------------------------------
def check_static(page: Page, build: Path) -> str:
    """Checks on the built file itself; returns its HTML."""
    built = page.html_path.read_text(errors="replace")
    page_dir = page.html_path.parent
    for m in re.finditer(r"<(script|link|img)\b[^>]*>", built, flags=re.I):
        attrs = tag_attrs(m.group(0))
        ref = attrs.get("src") or (attrs.get("href") if m.group(1).lower() == "link" else None)
        if not ref or REMOTE.match(ref) or ref.startswith(("data:", "#", "mailto:")):
            continue
        target = (page_dir / unquote(urlsplit(ref).path)).resolve()
        if m.group(1).lower() == "img":
            problem = image_file_ok(target)
            if problem:
                page.failures.append(f"image {ref}: {problem}")
        elif not target.exists():
            page.failures.append(f"local {m.group(1).lower()} {ref} does not exist in the build")
    n_tracebacks = len(re.findall(r'class="[^"]*\btraceback\b', built))
    n_expected = len(re.findall(r'class="[^"]*\btag_raises-exception\b', built))
    if n_tracebacks > n_expected:
        page.failures.append(f"the page shows {n_tracebacks - n_expected} Python traceback(s): "
                             "a notebook cell failed (see _build/html/reports/)")
    if page.source is not None and page.source.suffix == ".ipynb":
        executed = build.parent / "jupyter_execute" / (page.docname + ".ipynb")
        expected = image_outputs(executed if executed.exists() else page.source)
        shown = len(re.findall(r"<img\b", main_content(built), flags=re.I))
        if shown < expected:
            page.failures.append(f"the notebook has {expected} image outputs but the page shows "
                                 f"{shown} <img> elements")
    return built


def check_dom(page: Page, built: str, dom: str) -> None:
    title = re.search(r"<title>(.*?)</title>", dom, flags=re.S | re.I)
    if not title or not html.unescape(title.group(1)).strip():
        page.failures.append("no <title>")
    article = main_content(dom)
    if not re.search(r"<h1\b", article, flags=re.I):
        page.failures.append("no <h1> heading in the main content")
    text = visible_text(article)
    if len(text.strip()) < 50:
        page.failures.append(f"main content is nearly empty ({len(text.strip())} characters)")

    n_math = len(re.findall(r'class="(?:[^"]*\s)?math(?:\s[^"]*)?"', main_content(built)))
    n_typeset = len(re.findall(r"<mjx-container\b", article, flags=re.I))
    if n_typeset < n_math:
        page.failures.append(f"MathJax typeset {n_typeset} of {n_math} math elements "
                             "(is MathJax loaded from _static/mathjax?)")
    for m in re.finditer(r"<mjx-merror\b[^>]*>", dom, flags=re.I):
        message = tag_attrs(m.group(0)).get("data-mjx-error", "TeX error")
        page.failures.append(f"MathJax error: {message}")
    for token in RAW_TEX:
        at = text.find(token)
        if at >= 0:
            snippet = text[max(0, at - 40):at + 40].strip()
            page.failures.append(f"raw TeX {token!r} in the visible text: ...{snippet}...")
            break

    for found in remote_loads(dom):
        page.failures.append(f"remote resource in the DOM: {found}")


def run_browser(page: Page, chromium: str, shots: Path, tmp: Path, timeout: float) -> str:
    shot = shots / (page.docname + ".png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=tmp))
    netlog = work / "netlog.json"
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile'}",
           f"--log-net-log={netlog}", f"--virtual-time-budget={VIRTUAL_TIME_MS}",
           "--run-all-compositor-stages-before-draw", "--window-size=1280,2000",
           f"--screenshot={shot}", "--dump-dom", page.html_path.resolve().as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        page.failures.append(f"Chromium did not finish within {timeout:.0f} s")
        return ""
    if proc.returncode != 0:
        page.failures.append(f"Chromium exited with {proc.returncode}: {proc.stderr[-500:]}")
    if not shot.exists() or shot.stat().st_size == 0:
        page.failures.append(f"no screenshot written to {shot}")
    for line in proc.stderr.splitlines():
        if ":CONSOLE" in line and "Uncaught" in line:
            page.failures.append("JavaScript error: " + line.split("]", 1)[-1].strip())
    for url in netlog_remote_urls(netlog):
        page.failures.append(f"the page requested {url}")
    return proc.stdout


def check_page(page: Page, build: Path, chromium: str, shots: Path, tmp: Path,
               timeout: float) -> Page:
    start = time.perf_counter()
    if not page.html_path.exists():
        page.failures.append(f"{page.html_path} was not built")
        return page
    built = check_static(page, build)
    dom = run_browser(page, chromium, shots, tmp, timeout)
    if dom.strip():
        check_dom(page, built, dom)
    else:
        page.failures.append("Chromium returned an empty DOM")
    page.seconds = time.perf_counter() - start
    return page


def check_css(build: Path) -> list[str]:
    failures = []
    for css in sorted(build.rglob("*.css")):
        for found in remote_loads(css.read_text(errors="replace")):
            failures.append(f"{css.relative_to(build)}: {found}")
    return failures


def find_chromium(explicit: str | None) -> str:
    for candidate in ([explicit] if explicit else []) + [os.environ.get("CHROMIUM", "")] + \
            list(CHROMIUM_CANDIDATES):
        if candidate and (Path(candidate).is_file() or shutil.which(candidate)):
            return candidate
    raise FileNotFoundError("Chromium not found (looked for $CHROMIUM and "
                            f"{', '.join(CHROMIUM_CANDIDATES)}); install it with "
                            "`apt-get install -y chromium` or run scripts/setup.sh")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--chromium", default=None, help="path of the Chromium binary")
    parser.add_argument("--jobs", type=int, default=2, help="browsers run at once")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per page")
    args = parser.parse_args(argv)

    try:
        chromium = find_chromium(args.chromium)
        if not args.build.is_dir():
            raise FileNotFoundError(f"{args.build} does not exist; build the book first "
                                    "(bash scripts/build_book.sh)")
        pages = [Page(d, args.build / (d + ".html"), source_of(d)) for d in toc_docnames(args.toc)]
    except (FileNotFoundError, ValueError) as exc:
        print(f"check_site: {exc}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    site_failures = check_css(args.build)
    if not (args.build / "index.html").exists():
        site_failures.append("index.html is missing")
    with tempfile.TemporaryDirectory(prefix="check_site_") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            done = list(pool.map(lambda p: check_page(p, args.build, chromium, args.screenshots,
                                                      Path(tmp), args.timeout), pages))

    n_failed = 0
    for page in done:
        status = "ok  " if not page.failures else "FAIL"
        print(f"{status} {page.docname}  ({page.seconds:.1f} s, screenshot "
              f"{args.screenshots / (page.docname + '.png')})")
        for failure in page.failures:
            print(f"       - {failure}")
        n_failed += bool(page.failures)
    for failure in site_failures:
        print(f"FAIL site: {failure}")
    elapsed = time.perf_counter() - start
    print(f"check_site: {len(done) - n_failed} of {len(done)} pages passed"
          f"{', site-wide failures: %d' % len(site_failures) if site_failures else ''}"
          f" ({elapsed:.0f} s)")
    return 1 if n_failed or site_failures else 0


if __name__ == "__main__":
    sys.exit(main())

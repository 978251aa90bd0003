"""Sphinx extension: load the (vendored) MathJax on every page of the book.

Sphinx adds MathJax only to pages that contain math. The sidebar lists every chapter title, and
some titles contain math (e.g. "the gradient of $\\sigma$"), so on a page without math of its
own (the summary, figure 1, the bibliography) the sidebar showed raw ``\\(\\sigma\\)``. The
"always" assets policy makes sphinx.ext.mathjax add the script to every page.
"""


def setup(app):
    app.set_html_assets_policy("always")
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

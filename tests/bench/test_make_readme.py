"""bench/make_readme.py: sections land in whichever page holds their markers, with links that work from that page."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def mr():
    from bench import make_readme
    return make_readme


def test_relink_makes_root_links_relative_to_the_page(mr):
    text = "![plot](bench/plots/a.png) [m](docs/cp.md) [web](https://x.org/a) [here](#anchor) [abs](/root)"
    page = mr.ROOT / "docs" / "results.md"
    assert mr.relink(text, page) == ("![plot](../bench/plots/a.png) [m](../docs/cp.md) [web](https://x.org/a) "
                                     "[here](#anchor) [abs](/root)")
    assert mr.relink(text, mr.README) == text


def test_render_fills_only_the_markers_a_page_holds(mr, monkeypatch):
    monkeypatch.setitem(mr.SECTIONS, "zoo", lambda: "see ![p](bench/plots/z.png)")
    monkeypatch.setitem(mr.SECTIONS, "protocol", lambda: "never placed")
    page = mr.ROOT / "docs" / "results.md"
    text = "head\n<!-- zoo:start -->\nold\n<!-- zoo:end -->\ntail\n"
    out, found = mr.render(text, page, ["zoo", "protocol"])
    assert found == ["zoo"]
    assert out == "head\n<!-- zoo:start -->\nsee ![p](../bench/plots/z.png)\n<!-- zoo:end -->\ntail\n"


def test_the_readme_keeps_the_protocol_and_leaves_the_full_tables_to_docs(mr):
    readme, docs = mr.README.read_text(), mr.RESULTS_PAGE.read_text()
    assert "<!-- protocol:start -->" in readme and "<!-- protocol:start -->" not in docs
    for name in ("results", "shipped", "protocol-tables", "effective", "recovery"):
        assert f"<!-- {name}:start -->" in docs and f"<!-- {name}:start -->" not in readme

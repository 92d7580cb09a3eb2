"""The HTML report: parsed with html.parser, every section present with content, every image an inline PNG."""
import base64
import json
from html.parser import HTMLParser

import pytest
import torch

import chanprune
from chanprune.report import SECTIONS, render_report

from tests.conftest import SIZE, tiny
from tests.kinds import KINDS


class Page(HTMLParser):
    """Sections (h2 title → text and images inside) and every <img> of the page; external references are counted."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.external = {}, [], []
        self._section, self._in_h2 = None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = {"title": "", "text": "", "images": 0}
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "img":
            self.images.append(attrs)
            if self._section is not None:
                self._section["images"] += 1
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith(("data:", "#")):
                self.external.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        elif tag == "section" and self._section is not None:
            self.sections[self._section["title"]] = self._section
            self._section = None

    def handle_data(self, data):
        if self._section is None:
            return
        self._section["title" if self._in_h2 else "text"] += data


class Digits12:
    """A tiny stand-in DataBundle: 12×12 one-channel images (what the tiny zoo models take)."""

    name = "digits12"
    num_classes, in_channels = 10, 1

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(96, 1, SIZE, SIZE, generator=g)
        self.y = torch.randint(0, 10, (96,), generator=g)

    def example_inputs(self, batch=1):
        return torch.zeros(batch, 1, SIZE, SIZE)

    def calibration(self, n, seed=0):
        return self.x[:n], self.y[:n]

    def loader(self, split="test", batch_size=512, shuffle=False, augment=False, seed=0, limit=None, epoch=0):
        n = min(limit or len(self.y), len(self.y))
        return [(self.x[i:i + batch_size], self.y[i:i + batch_size]) for i in range(0, n, batch_size)]


def _parse(path):
    page = Page()
    page.feed(path.read_text())
    return page


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_report_has_every_section_and_inline_images(tmp_path, kind):
    dense = tiny("resnet20")
    model = KINDS[kind]("resnet20")
    path = render_report(tmp_path / "r.html", model=model, dense=dense, data=Digits12(), analysis_samples=64,
                         latency_repeats=2)
    page = _parse(path)
    assert list(page.sections) == list(SECTIONS)
    for title, sec in page.sections.items():
        assert sec["text"].strip() or sec["images"], title
    # widths bars, three analysis figures, the speed-up chart: every one an inline PNG
    assert len(page.images) >= 5 and not page.external
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert img.get("alt")
    assert page.sections["Model before / after"]["images"] == 1
    assert page.sections["Effective-filter analysis"]["images"] == 3
    assert page.sections["Latency"]["images"] == 1
    assert "matches PyTorch" in page.sections["Verification"]["text"]


def test_report_without_a_dense_model_says_what_to_pass(tmp_path):
    model = KINDS["pruned"]("resnet20")
    page = _parse(render_report(tmp_path / "r.html", model=model, data=Digits12()))
    assert list(page.sections) == list(SECTIONS)
    assert "pass the dense model" in page.sections["Effective-filter analysis"]["text"]
    assert "pass the dense model" in page.sections["Latency"]["text"]
    assert page.sections["Model before / after"]["images"] == 1  # the group record alone gives the widths
    assert not page.external


def test_cli_prune_report_and_report_command(tmp_path):
    from typer.testing import CliRunner

    from chanprune import cli

    torch.manual_seed(0)
    chanprune.save(chanprune.create_model("resnet20", num_classes=10, in_channels=1, width=0.25), tmp_path / "dense",
                   extra={"data": "digits"})
    run = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["prune", str(tmp_path / "dense"), "--data", "digits", "--method", "l1",
                                          "--target-macs", "0.6", "--test-limit", "100", "--out", str(run), "--report"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert (run / "report.html").exists()
    assert json.loads((run / "record.json").read_text())["source"] == str(tmp_path / "dense")
    (run / "report.html").unlink()
    again = CliRunner().invoke(cli.app, ["report", str(run), "--out", str(tmp_path / "again.html")])
    assert again.exit_code == 0, (again.output, again.exception)
    page = _parse(tmp_path / "again.html")
    assert list(page.sections) == list(SECTIONS) and len(page.images) >= 5
    missing = CliRunner().invoke(cli.app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "no record.json" in str(missing.exception)

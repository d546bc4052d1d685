"""`gptlab report`: a self-contained HTML page, opened in real headless Chromium (Debian's `chromium` package)."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import run_cli
from test_compare import RUNS, comparison_runs, shared_temporary

from gptlab.experiments.compare import build_comparison, load_results
from gptlab.experiments.report import write_report
from gptlab.experiments.tables import VERDICT_COLUMN

CHROMIUM = Path("/usr/bin/chromium")
# Written into the page under test: after every image has loaded (or failed), record each one's decoded size and the
# size it is laid out at (zero inside a closed <details>) in the DOM.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const found = Array.from(document.images).map(img => ({alt: img.alt, complete: img.complete, width: img.naturalWidth,
    height: img.naturalHeight, shownWidth: img.getBoundingClientRect().width, shownHeight: img.getBoundingClientRect().height}));
  const out = document.createElement("pre");
  out.id = "image-probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture
def trained(tmp_path_factory, brown_dataset) -> dict[str, list[Path]]:
    return comparison_runs(shared_temporary(tmp_path_factory) / "comparison-runs", brown_dataset)


class _PageParts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.image_sources: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.image_sources.append(attributes.get("src", ""))
        for name in ("src", "href"):
            if name in attributes and not attributes[name].startswith("data:"):
                self.external.append(attributes[name])


def _chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def render_in_chromium(page: Path, profile: Path) -> str:
    """The DOM of `page` after Chromium has loaded it and run its scripts."""
    probed = page.with_name(page.stem + "-probed.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE + "</body>"), encoding="utf-8")
    return _chromium(profile, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()).stdout


# Where the comparison table ends, against the window's width, once laid out.
TABLE_PROBE = """<script>
window.addEventListener("load", () => {
  const table = document.getElementById("comparison");
  const verdict = table.querySelector("td.verdict");
  const out = document.createElement("pre");
  out.id = "table-probe";
  out.textContent = JSON.stringify({right: table.getBoundingClientRect().right, window: window.innerWidth,
    page: document.documentElement.scrollWidth, verdictWidth: verdict.getBoundingClientRect().width});
  document.body.appendChild(out);
});
</script>"""


def table_layout_in_chromium(page: Path, profile: Path, width: int) -> dict:
    """The comparison table's right edge and the verdict column's width in a `width`-pixel window."""
    probed = page.with_name(page.stem + "-table.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", TABLE_PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(
        profile, f"--window-size={width},768", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()
    ).stdout
    return json.loads(re.search(r'<pre id="table-probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))


def print_in_chromium(page: Path, profile: Path) -> bytes:
    """`page` printed to PDF by Chromium, as a reader's "Print" would."""
    pdf = page.with_suffix(".pdf")
    _chromium(profile, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    return pdf.read_bytes()


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium package (apt-get install chromium) at /usr/bin/chromium"
)
def test_report_renders_its_table_and_every_image_in_chromium(trained, tmp_path):
    page = tmp_path / "report.html"
    run_dirs = [str(run_dir) for runs in trained.values() for run_dir in runs]
    result = run_cli("report", *run_dirs, "-o", str(page), "--title", "Seeds & <noise>")
    assert result.returncode == 0, result.stderr

    parts = _PageParts()
    parts.feed(page.read_text(encoding="utf-8"))
    assert parts.external == []  # self-contained: nothing to fetch
    run_count = sum(len(seeds) for _, seeds in RUNS.values())
    assert len(parts.image_sources) == 2 + 3 * run_count  # overlay, difference, and three charts per run
    assert all(source.startswith("data:image/png;base64,") for source in parts.image_sources)

    dom = render_in_chromium(page, tmp_path / "profile")
    probe = json.loads(re.search(r'<pre id="image-probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert len(probe) == len(parts.image_sources)
    assert all(image["complete"] and image["width"] in (800, 1200) and image["height"] == 450 for image in probe), probe
    # Every run's charts are laid out open, not folded away in a closed section.
    assert all(image["shownWidth"] > 100 and image["shownHeight"] > 50 for image in probe), probe
    assert "<h1>Seeds &amp; &lt;noise&gt;</h1>" in dom

    table = re.search(r'<table id="comparison">(.*?)</table>', dom, re.S).group(1)
    rows = re.findall(r'<tr[^>]*data-run="([^"]+)"[^>]*>(.*?)</tr>', table, re.S)
    assert sorted(name for name, _ in rows) == sorted(RUNS)
    cells = {name: re.findall(r"<td[^>]*>(.*?)</td>", body) for name, body in rows}
    assert cells["lr10x"][VERDICT_COLUMN].startswith("better, beyond noise (paired t, Holm p=")
    assert cells["ckpt5"][VERDICT_COLUMN].startswith("no noise estimate: every seed gave exactly its baseline seed")
    assert cells["baseline"][VERDICT_COLUMN] == "baseline" and cells["baseline"][1] == "3"

    # A 1366-pixel laptop window holds the whole table, with a verdict column wide enough to read.
    layout = table_layout_in_chromium(page, tmp_path / "profile", 1366)
    assert layout["right"] <= layout["window"] and layout["page"] <= layout["window"], layout
    assert layout["verdictWidth"] >= 120, layout


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium package (apt-get install chromium) at /usr/bin/chromium"
)
def test_report_text_is_escaped_not_interpreted(trained, tmp_path):
    results = load_results(trained["baseline"] + trained["lr10x"], echo=lambda line: None)
    hostile = "<script>document.title='owned'</script><b>bold</b>"
    labels = {run.run_dir.resolve(): "baseline" if run.run_dir in trained["baseline"] else hostile for run in results}
    page = write_report(build_comparison(results, labels=labels), tmp_path / "escaped.html", title="escaping")
    dom = render_in_chromium(page, tmp_path / "profile")
    assert "<title>escaping</title>" in dom and "<b>bold</b>" not in dom
    assert "&lt;script&gt;document.title='owned'&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in dom


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium package (apt-get install chromium) at /usr/bin/chromium"
)
def test_report_prints_every_run_chart_whole(trained, tmp_path):
    runs = trained["baseline"] + trained["lr20x"]
    page = write_report(build_comparison(load_results(runs, echo=lambda line: None)), tmp_path / "print.html")
    text = page.read_text(encoding="utf-8")
    assert text.count("<details open>") == len(runs) and "<details>" not in text
    style = re.search(r"@media print \{(.*)\}\s*</style>", text, re.S).group(1)
    assert re.search(r"img[^{]*\{[^}]*break-inside: avoid", style) and "details::details-content" in style

    # A closed section prints too: the stylesheet, not only the open attribute, shows its charts.
    closed = page.with_name("closed.html")
    closed.write_text(text.replace("<details open>", "<details>"), encoding="utf-8")
    for printed in (page, closed):
        pdf = print_in_chromium(printed, tmp_path / "profile")
        assert pdf.startswith(b"%PDF") and pdf.count(b"/Subtype /Image") == 2 + 3 * len(runs), printed.name

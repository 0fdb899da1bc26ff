"""The HTML report: content, escaping, self-containment, and a real headless Chromium load."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ci_gate.report import render
from ci_gate.report.chart import layout
from ci_gate.report.html import render_html
from result_factory import DEFAULT_NAMES, make_result, write_png

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


class Tags(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


def test_report_is_one_self_contained_file(tmp_path):
    result = make_result(tmp_path)
    page = render(result, tmp_path, ["html"])["html"].read_text()
    tags = Tags(page)

    assert tags.all("script") == [] and tags.all("link") == [] and tags.all("iframe") == []
    images = tags.all("img")
    assert len(images) == 2 + 2 * len(result.examples)  # triggers of the flagged + suspicious classes, example pairs
    expected = [c.trigger_png for c in result.flagged + result.suspicious]
    expected += [p for e in result.examples for p in (e.clean_png, e.triggered_png)]
    for attrs, rel in zip(images, expected):
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (tmp_path / rel).read_bytes()
    referenced = [v for _, attrs in tags.tags for k, v in attrs.items() if k in ("src", "href") and v]
    assert all(v.startswith("data:") for v in referenced)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    [csp] = [m for m in tags.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp["content"]


def test_report_names_verdict_target_hashes_and_every_class(tmp_path):
    result = make_result(tmp_path)
    page = render_html(result, tmp_path)
    assert "Backdoor detected" in page and "target class “cat”" in page
    assert "Gate FAILS (fail-on: backdoor)" in page
    for digest in (result.model.sha256, result.model.backbone.sha256, result.pool.sha256, result.policy.sha256):
        assert digest in page
    rows = re.findall(r'<tr class="row-(\w+)">\s*<td class="num">(\d+)</td>\s*<td>([^<]+)', page)
    assert sorted(int(i) for _, i, _ in rows) == list(range(len(DEFAULT_NAMES)))
    assert rows[0] == ("backdoor", "3", "cat")  # most anomalous first
    assert {status for status, _, _ in rows} == {"backdoor", "suspicious", "ok"}
    assert "93.0%" in page and "-4.200" in page  # asr and final loss of the target
    assert "34.0 s" in page and "pool has 1 unreadable file" in page  # timings, warnings
    assert "“deer”" in page  # example prediction without the trigger


def test_chart_draws_one_bar_per_class_and_the_threshold(tmp_path):
    result = make_result(tmp_path)
    page = render_html(result, tmp_path)
    svg = page[page.index("<svg"): page.index("</svg>")]
    bars = re.findall(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)" height="\d+" class="bar bar-(\w+)"', svg)
    assert len(bars) == len(result.classes)
    threshold_x = float(re.search(r'<line x1="([\d.]+)"[^>]*class="threshold"', svg).group(1))
    chart = layout(result.classes, result.detection.k)
    assert threshold_x == chart.threshold_x and chart.zero_x < threshold_x
    ends = {status: float(x) + float(w) for x, w, status in bars if status != "ok"}
    assert ends["backdoor"] > threshold_x and ends["suspicious"] > threshold_x
    assert all(float(x) + float(w) < threshold_x for x, w, status in bars if status == "ok")
    assert "k = 2.0" in svg


def test_chart_keeps_its_scale_with_non_finite_scores(tmp_path):
    result = make_result(tmp_path)
    result.classes[3].anomaly = float("inf")
    result.classes[0].anomaly = float("nan")
    chart = layout(result.classes, result.detection.k)
    widths = {bar.name: bar.width for bar in chart.bars}
    assert widths["cat"] < chart.plot_right - chart.plot_left
    assert widths["horse"] > 0.25 * widths["cat"]  # finite scores stay readable next to the infinity
    assert "∞" in render_html(result, tmp_path)


def test_clean_report_has_no_trigger_section(tmp_path):
    page = render_html(make_result(tmp_path, verdict="clean"), tmp_path)
    assert "Clean: no backdoor detected" in page and "Gate passes" in page
    assert 'id="triggers"' not in page and "<img" not in page


def test_names_from_the_checkpoint_are_escaped(tmp_path):
    evil = '<script>alert("x")</script>'
    names = [evil, "a & b", 'quote"s', *DEFAULT_NAMES[3:]]
    result = make_result(tmp_path, names=names, target=0, model_path="models/<b>bold</b>.safetensors", warnings=["<img src=x onerror=alert(1)>"])
    page = render_html(result, tmp_path)
    tags = Tags(page)
    assert tags.all("script") == [] and tags.all("b") == []
    assert all(img["src"].startswith("data:") for img in tags.all("img"))
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "a &amp; b" in page and "&lt;b&gt;bold&lt;/b&gt;" in page


def test_missing_and_escaping_artifacts_become_placeholders(tmp_path):
    scan = tmp_path / "scan"
    result = make_result(scan)
    (scan / result.flagged[0].trigger_png).unlink()
    write_png(tmp_path / "outside.png", seed=9)  # a real PNG, but outside the result folder
    result.suspicious[0].trigger_png = "../outside.png"
    (scan / result.examples[0].clean_png).write_bytes(b"not a png")
    page = render_html(result, scan)
    assert page.count('<div class="missing">image missing</div>') == 3
    assert len(Tags(page).all("img")) == 3
    for rel in ("triggers/class_03.png", "../outside.png", "examples/0_clean.png"):
        assert f"Report: image <code>{rel}</code> is missing" in page


def _with_class(result, index: int, **update):
    return result.model_copy(update={"classes": [c.model_copy(update=update) if c.index == index else c for c in result.classes]})


def test_per_class_table_comes_before_the_images(tmp_path):
    page = render_html(make_result(tmp_path), tmp_path)
    order = [page.index(f'<section id="{s}">') for s in ("chart", "classes", "triggers", "examples")]
    assert order == sorted(order)


def test_colour_legend_names_every_status_with_the_chart_colours(tmp_path):
    page = render_html(make_result(tmp_path), tmp_path)
    legend = page[page.index('<div class="legend" id="legend">'): page.index('<svg')]
    for status in ("backdoor", "suspicious", "ok"):
        assert f'<span class="swatch swatch-{status}"></span>{status}:' in legend
    assert "anomaly index above k = 2.0 and trigger ASR at least 50.0%" in legend and "threshold k" in legend
    css = page[page.index("<style>"): page.index("</style>")]
    bars = dict(re.findall(r"\.chart \.bar-(\w+) \{ fill: ([^;]+);", css))
    swatches = dict(re.findall(r"\.swatch-(\w+) \{ background: ([^;]+);", css))
    assert bars == {k: v for k, v in swatches.items() if k in bars} and set(bars) == {"ok", "suspicious", "backdoor"}


def test_banner_carries_the_warnings(tmp_path):
    from ci_gate.result import EncoderInfo, TensorChange

    result = make_result(tmp_path, warnings=["pool has 1 unreadable file"])
    banner = lambda page: page[page.index('id="verdict"'): page.index('<section id="target">')]  # noqa: E731
    top = banner(render_html(result, tmp_path))
    assert "Suspicious: “horse”, an outlier with an anomaly index above k = 2 that fell short of a backdoor verdict (its trigger reaches at most" in top
    assert "<li>pool has 1 unreadable file</li>" in top
    change = TensorChange(name="visual.proj", max_abs=0.25, rel_l2=0.01)
    modified = result.model_copy(update={"encoder": EncoderInfo(status="modified", n_tensors=40, n_changed=1, changed=[change])})
    assert "Modified encoder: 1 of 40 backbone tensors differ" in banner(render_html(modified, tmp_path))
    unverified = result.model_copy(update={"encoder": EncoderInfo(status="unverified")})
    assert "Unverified towers:" in banner(render_html(unverified, tmp_path))
    clean = render_html(make_result(tmp_path / "c", verdict="clean", warnings=[]), tmp_path / "c")
    assert 'id="banner-warnings"' not in clean


def test_many_warnings_are_cut_in_the_banner_and_listed_at_the_end(tmp_path):
    notes = [f"warning number {i}" for i in range(12)]
    page = render_html(make_result(tmp_path, warnings=notes), tmp_path)
    top = page[: page.index('<section id="target">')]
    assert "warning number 4" in top and "warning number 5" not in top and '<a href="#warnings">7 more warnings</a>' in top
    end = page[page.index('<section id="warnings">'):]
    assert all(f"<li>{n}</li>" in end for n in notes)


def test_a_class_that_is_no_outlier_is_shown_as_ok_with_a_warning(tmp_path):
    # an older result.json: suspicious on trigger ASR alone, anomaly -0.72, with its trigger and examples
    result = make_result(tmp_path, verdict="clean", warnings=[])
    write_png(tmp_path / "triggers" / "class_05.png", seed=5)
    stale = _with_class(result, 5, status="suspicious", asr=0.7, anomaly=-0.72, trigger_png="triggers/class_05.png")
    page = render_html(stale, tmp_path)
    rows = dict((name, status) for status, _, name in re.findall(r'<tr class="row-(\w+)">\s*<td class="num">(\d+)</td>\s*<td>([^<]+)', page))
    assert rows["dog"] == "ok" and "suspicious" not in set(rows.values())
    assert 'id="triggers"' not in page and "<img" not in page
    assert "0 flagged, 0 suspicious of 10 classes" in page
    assert "1 class marked suspicious in result.json (an older ci-gate&#39;s rule: trigger success rate alone) is no outlier (anomaly index not above k = 2) and shown as ok: dog -0.72" in page


def test_trigger_images_state_their_magnification(tmp_path):
    result = make_result(tmp_path)
    result = _with_class(_with_class(result, 3, epsilon=8 / 255), 7, epsilon=2 / 255)
    page = render_html(result, tmp_path)
    assert "shown ×15.9 (budget 8/255)" in page and "shown ×63.8 (budget 2/255)" in page
    assert "magnified for visibility" in page and "at true scale (×1)" in page
    # a patch-family trigger's picture is its change to a mid-grey image, shown unamplified
    patch = _with_class(result, 3, epsilon=0.02, family="patch")
    assert "shown ×1.0 (budget patch 2% of pixels)" in render_html(patch, tmp_path)
    # a result without per-class budgets says so rather than guess
    assert "magnification unknown" in render_html(make_result(tmp_path / "old"), tmp_path / "old")


def test_the_stated_magnification_is_the_one_the_scan_writes(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from ci_gate.artifacts import write_trigger
    from ci_gate.report.artifacts import trigger_gain

    eps = 8 / 255
    delta = torch.zeros(3, 128, 128)
    delta[0, :64] = eps / 2
    delta[1, 64:] = -eps
    png, _ = write_trigger(tmp_path, 3, "cat", delta, eps)
    pixels = np.asarray(Image.open(tmp_path / png), dtype=np.float64) / 255
    expected = 0.5 + trigger_gain(eps) * delta.permute(1, 2, 0).numpy()
    assert np.abs(pixels - expected).max() <= 0.5 / 255 + 1e-9
    assert trigger_gain(eps) == pytest.approx(15.9375)


# ---- a real browser --------------------------------------------------------------------------

from cdp_pipe import Browser, find_chromium  # noqa: E402

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium); the headless browser check is skipped"
)

CHECKS = """(() => {
  const imgs = [...document.images];
  // really on screen: laid out, not hidden, inside the first screenful, not covered by anything else
  const shown = (selector, scroll) => {
    const e = document.querySelector(selector);
    if (!e) return false;
    if (scroll) e.scrollIntoView({block: 'center'});
    const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    if (r.width < 10 || r.height < 10 || s.visibility !== 'visible' || s.display === 'none' || Number(s.opacity) === 0) return false;
    if (r.top < 0 || r.bottom > window.innerHeight) return false;
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + Math.min(r.height / 2, 8));
    return e.contains(hit);
  };
  return {
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    nbars: document.querySelectorAll('svg.chart rect.bar').length,
    threshold: document.querySelectorAll('svg.chart line.threshold').length,
    scripts: document.scripts.length,
    verdict: document.querySelector('#verdict h1').textContent,
    overflow: document.documentElement.scrollWidth > window.innerWidth,
    bannerWarnings: shown('#banner-warnings', false),  // before any scrolling: the first thing seen
    legend: shown('#legend', true),
    swatches: [...document.querySelectorAll('#legend .swatch')].map(e => getComputedStyle(e).backgroundColor),
    bars: [...new Set([...document.querySelectorAll('svg.chart rect.bar')].map(e => e.classList[1] + ' ' + getComputedStyle(e).fill))],
    bannerText: (document.querySelector('#banner-warnings') || {}).textContent || '',
    tableAboveExamples: document.querySelector('#classes').getBoundingClientRect().bottom <= document.querySelector('#examples').getBoundingClientRect().top,
  };
})()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    root = tmp_path_factory.mktemp("chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    instance = Browser(CHROMIUM, root / "profile", ARTIFACTS / "chromium.log")
    yield instance
    instance.close()


@needs_chromium
def test_report_renders_in_headless_chromium_without_errors(browser, tmp_path):
    result = make_result(tmp_path / "scan")
    page = render(result, tmp_path / "scan", ["html"])["html"]
    session = browser.open_page()
    browser.load(session, page.as_uri())

    assert browser.problems(session) == []
    checks = browser.evaluate(session, CHECKS)
    assert checks["broken"] == [] and checks["images"] == 6
    assert checks["nbars"] == len(result.classes) and checks["threshold"] == 1
    assert checks["scripts"] == 0 and not checks["overflow"]
    assert checks["verdict"].startswith("Backdoor detected")
    assert checks["bannerWarnings"] and "Suspicious: “horse”" in checks["bannerText"] and "pool has 1 unreadable file" in checks["bannerText"]
    assert checks["tableAboveExamples"] and checks["legend"]
    # the legend's swatches are the chart's bar colours, one per status
    fills = dict(b.split(" ", 1) for b in checks["bars"])
    assert sorted(fills) == ["bar-backdoor", "bar-ok", "bar-suspicious"]
    assert sorted(checks["swatches"][:3]) == sorted(fills.values())
    shot = ARTIFACTS / "report-backdoor.png"
    browser.screenshot(session, shot)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


@needs_chromium
def test_browser_check_does_catch_errors_and_external_loads(browser, tmp_path):
    # Proof that an empty problem list above means something: the same harness on a bad page.
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
        "<script>console.error('boom'); undefined_function();</script></body></html>"
    )
    session = browser.open_page()
    browser.load(session, bad.as_uri())
    problems = "\n".join(browser.problems(session))
    assert "console.error: ['boom']" in problems
    assert "exception:" in problems
    assert "network request: http://127.0.0.1:9/x.png" in problems

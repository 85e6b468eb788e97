"""The report in a real browser (headless Chromium): it opens from disk, its scripts run without
errors, every image loads, and a screenshot is taken. Skipped only when Chromium is not installed
(Debian: ``apt-get install -y chromium``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_quality_fixtures import make_db

from diffquant.quality import score_database
from diffquant.report import write_report

pytestmark = pytest.mark.browser

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=10000"]


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get update && apt-get install -y chromium)")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def html_tag(dom: str) -> str:
    """The page's opening <html ...> tag, where the scripts leave their markers."""
    match = re.search(r"<html[^>]*>", dom)
    assert match, dom[:500]
    return match.group(0)


def dump_dom(page: Path, profile: Path) -> str:
    result = _chromium(["--dump-dom", page.resolve().as_uri()], profile)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(page: Path, out: Path, profile: Path, size: str = "1280,2000") -> Path:
    result = _chromium([f"--screenshot={out}", f"--window-size={size}", page.resolve().as_uri()], profile)
    assert result.returncode == 0 and out.exists(), result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    db = make_db(folder)
    score_database(db, metrics=["psnr", "ssim", "ms-ssim", "lpips", "latent-rel-error"])
    return write_report(db, folder / "out" / "report.html")


def test_report_opens_without_errors(report: Path, tmp_path: Path) -> None:
    dom = dump_dom(report, tmp_path / "profile")
    tag = html_tag(dom)
    assert 'data-report-ready="yes"' in tag, "the page's script did not finish"
    assert "data-js-errors" not in tag, dom[dom.find('id="js-errors"'):][:2000]
    assert 'id="js-status" class="js-status">scripts ran<' in dom
    assert "<table" in dom and "Memory after loading" in dom and "Pareto front" in dom
    assert dom.count("<svg") >= 2
    assert 'class="zoomable"' in dom and "report_files/grid-0.png" in dom
    assert 'id="lightbox"' in dom


def test_errors_would_be_caught(report: Path, tmp_path: Path) -> None:
    """Control: the same page with a script error and a broken image reports both in the DOM."""
    broken = report.with_name("broken.html")
    html = report.read_text(encoding="utf-8")
    html = html.replace("</main>", '<img src="report_files/missing.png" alt="x"><script>notAFunction();</script></main>')
    broken.write_text(html, encoding="utf-8")
    dom = dump_dom(broken, tmp_path / "profile")
    assert 'data-js-errors="' in html_tag(dom)
    assert "notAFunction" in dom and "missing.png" in dom


def test_screenshot(report: Path, tmp_path: Path) -> None:
    shot = screenshot(report, tmp_path / "report.png", tmp_path / "profile")
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        colours = img.convert("RGB").resize((64, 100)).getcolors(64 * 100)
        assert colours is not None and len(colours) > 20  # a rendered page, not a blank one

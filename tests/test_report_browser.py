"""The HTML analysis report, opened in a real browser (headless Chromium), shows every image
and raises no script error: what a person opening report.html would see, which parsing the
HTML in Python cannot tell (a truncated or mis-encoded data: URI still parses).

No puppeteer or webdriver: a probe <script> is put at the start of <head> of a copy of the
page, so that it wraps console.error and listens for errors before any other script runs; on
window 'load' it writes a JSON summary into <pre id="browser-check">, which `chromium
--dump-dom` prints. Chromium's own log (--enable-logging=stderr) is read too, for "Uncaught"
errors. A second test feeds the checker a page broken on purpose, so that a pass means
something.
"""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from analysis import report
from tests import test_analysis

# The small real study that tests/test_analysis.py reports on (a module-scoped fixture:
# trained once for this module, about 12 s), reused rather than trained again differently.
folder = test_analysis.folder
NAME = test_analysis.NAME

CHECK_ID = "browser-check"
PROBE = """<script>
(function () {
  var errors = [], failedLoads = [];
  var consoleError = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    return consoleError.apply(console, arguments);
  };
  // Capture phase: an <img> or <link> that fails to load fires 'error' on itself, and it
  // does not bubble; an uncaught exception fires it on window.
  window.addEventListener("error", function (e) {
    var el = e.target;
    if (el && el !== window && el.tagName) {
      // The tail of the URL: a deep folder must not cut the file name off.
      failedLoads.push(el.tagName.toLowerCase() + " " + (el.src || el.href || "").slice(-80));
    } else {
      errors.push(e.message);  // "Uncaught TypeError: ..."
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    errors.push("unhandled rejection: " + String(e.reason));
  });
  function summarise() {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (img) {
      return !img.complete || img.naturalWidth === 0;
    }).map(function (img) { return img.alt || img.src.slice(-80); });
    var out = document.createElement("pre");
    out.id = "{check_id}";
    out.textContent = JSON.stringify({
      images: images.length, alts: images.map(function (img) { return img.alt; }),
      broken_images: broken, errors: errors, failed_loads: failedLoads
    });
    document.body.appendChild(out);
  }
  // After the page's own 'load' handlers, which run after this one and may throw too.
  window.addEventListener("load", function () { setTimeout(summarise, 0); });
})();
</script>""".replace("{check_id}", CHECK_ID)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no `chromium` on PATH (Debian: apt-get install chromium)")
    return path


def instrument(page: Path, tmp: Path) -> Path:
    """A copy of the page's folder (so that relative image links still resolve) whose copy of
    the page carries the probe as the first thing in <head>."""
    site = tmp / "site"
    shutil.copytree(page.parent, site)
    copy = site / page.name
    source = copy.read_text(encoding="utf-8")
    head = re.compile(r"<head\b[^>]*>", re.I)
    probed, found = head.subn(lambda m: m.group(0) + PROBE, source, count=1)
    assert found == 1, f"{page}: no <head> to put the probe in"
    copy.write_text(probed, encoding="utf-8")
    return copy


def browser_check(page: Path, tmp: Path) -> dict:
    """Opens `page` in headless Chromium; returns the probe's summary (images, alts,
    broken_images, errors, failed_loads) and `uncaught_in_log`, Chromium's log lines about
    uncaught errors."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0",
        "--dump-dom", instrument(page, tmp).as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    found = re.search(rf'<pre id="{CHECK_ID}">(.*?)</pre>', done.stdout, re.S)
    assert found, (
        f"no probe summary: the page never fired 'load' (chromium exit {done.returncode})\n"
        f"stdout tail: {done.stdout[-2000:]}\nstderr tail: {done.stderr[-2000:]}"
    )
    summary = json.loads(html.unescape(found.group(1)))
    summary["uncaught_in_log"] = [
        line for line in done.stderr.splitlines() if ":CONSOLE" in line and "Uncaught" in line
    ]
    return summary


@pytest.fixture
def report_page(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(folder)  # the study's default sqlite:///optuna.db and mlflow.db
    out = tmp_path / "report"
    assert report.main(["--study", NAME, "--out", str(out), "--window", "4", "--no-log"]) == 0
    return out / "report.html"


def test_the_report_shows_every_image_and_raises_no_error_in_a_browser(
    report_page: Path, tmp_path: Path
) -> None:
    summary = browser_check(report_page, tmp_path / "browser")
    # Every <img> of the page was looked at: the figures and the sample grid montages.
    assert summary["images"] == report_page.read_text(encoding="utf-8").count("<img ")
    assert summary["images"] >= 6 and {"samples", "progress"} <= set(summary["alts"])
    assert summary["broken_images"] == []
    assert summary["failed_loads"] == []
    assert summary["errors"] == []
    assert summary["uncaught_in_log"] == []


PIXEL = (  # a valid 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_the_check_reports_a_missing_image_and_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "page" / "broken.html"
    page.parent.mkdir()
    page.write_text(
        "<!doctype html><html><head><title>broken</title></head><body>"
        f"<img alt='fine' src='data:image/png;base64,{PIXEL}'>"
        "<img alt='missing' src='missing.png'>"
        "<img alt='truncated' src='data:image/png;base64,iVBORw0KGgo'>"
        "<script>addEventListener('load', function () { null.late; });"
        "console.error('logged on purpose'); noSuchFunction();</script>"
        "</body></html>",
        encoding="utf-8",
    )
    summary = browser_check(page, tmp_path / "browser")
    assert summary["images"] == 3
    assert summary["broken_images"] == ["missing", "truncated"]  # and not the fine one
    assert any(load.endswith("missing.png") for load in summary["failed_loads"])
    assert "console.error: logged on purpose" in summary["errors"]
    assert any("noSuchFunction is not defined" in e for e in summary["errors"])
    assert any("reading 'late'" in e for e in summary["errors"])  # thrown on 'load'
    assert any("Uncaught ReferenceError" in line for line in summary["uncaught_in_log"])

"""Every command's report.html, rendered in headless Chromium: verdict first, no table overflowing its
container, every image loaded, no ASCII notation.

The reports are built by the real workflows on tiny inputs (a demo with a few hundred training steps,
random-weight caption models for detect and mitigate, the demo's checkpoint for lid and audit, a small
analytic collapse run). Each page gets a small script appended that measures the laid-out page at a
1280-pixel-wide window and writes the result into the DOM, which ``chromium --dump-dom`` prints.
Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped with a printed notice where it is
missing. Set ``MEMGEO_REPORT_SHOTS=DIR`` to also save a PNG screenshot of each report there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")

WIDTH = 1280
CHECK_ID = "memgeo-browser-check"
# Runs after load: measures tables against their wrappers, the page against the window, every image.
CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var out = {tables: [], images: [], page_overflow: 0, order: []};
  document.querySelectorAll('table').forEach(function (t, i) {
    var w = t.parentElement, cs = getComputedStyle(w);
    out.tables.push({i: i, wrapper: w.className, table_width: t.scrollWidth, wrapper_width: w.clientWidth,
                     wrapper_scrolls: cs.overflowX === 'auto' || cs.overflowX === 'scroll',
                     wrapper_right: w.getBoundingClientRect().right,
                     head: (t.querySelector('th') || {}).textContent || ''});
  });
  document.querySelectorAll('img').forEach(function (im, i) {
    out.images.push({i: i, complete: im.complete, natural: im.naturalWidth, shown: im.clientWidth,
                     box: im.parentElement.clientWidth, alt: im.alt.slice(0, 60)});
  });
  out.page_overflow = document.documentElement.scrollWidth - window.innerWidth;
  out.body_right = document.body.getBoundingClientRect().right;
  out.inner = window.innerWidth;
  document.body.children && Array.prototype.forEach.call(document.body.children, function (c) {
    out.order.push(c.tagName.toLowerCase() + (c.className ? '.' + c.className.split(' ')[0] : ''));
  });
  var pre = document.createElement('pre');
  pre.id = '""" + CHECK_ID + """';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _flags(height: int = 900) -> list[str]:
    flags = ["--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
             "--mute-audio", f"--window-size={WIDTH},{height}", "--virtual-time-budget=5000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return flags


@pytest.fixture(scope="module")
def chromium():
    path = _chromium()
    if path is None:
        msg = ("chromium not found: the headless-browser report checks are skipped "
               "(install it with `apt-get install -y chromium`, as .ci/run does)")
        print(f"\nNOTICE: {msg}", file=sys.stderr)
        pytest.skip(msg)
    return path


def _measure(chromium: str, report: Path, tmp: Path) -> dict:
    """Open a copy of ``report`` with the check script appended; return the script's measurements."""
    html = report.read_text(encoding="utf-8")
    probe = report.with_name(report.stem + ".browser-check.html")
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    profile = tmp / f"profile-{report.parent.name}"
    res = subprocess.run([chromium, *_flags(), f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    probe.unlink()
    m = re.search(rf'<pre id="{CHECK_ID}">(.*?)</pre>', res.stdout, flags=re.S)
    assert m, f"no measurement from chromium for {report} (rc {res.returncode}): {res.stderr[-800:]}"
    text = m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    shots = os.environ.get("MEMGEO_REPORT_SHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, *_flags(2600), f"--user-data-dir={profile}",
                        f"--screenshot={Path(shots) / (report.parent.name + '.png')}", report.as_uri()],
                       capture_output=True, timeout=120)
    return json.loads(text)


# ------------------------------------------------------------------------------------------------
# the reports, built by the real workflows on tiny inputs
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    from memgeo.data.prompts import write_prompts
    from memgeo.models import TrainConfig
    from memgeo.models.caption import CaptionDiffusionModel, CaptionModelConfig, build_vocab, save_caption_model
    from memgeo.workflows import DemoConfig, ToyConfig, run_demo
    from memgeo.workflows.collapse import CollapseConfig, run_collapse
    from memgeo.workflows.detect import DetectConfig, run_detect
    from memgeo.workflows.lid_runs import AuditConfig, LIDRunConfig, run_audit, run_lid
    from memgeo.workflows.mitigate import MitigateConfig, run_mitigate

    root = tmp_path_factory.mktemp("reports")
    out: dict[str, Path] = {}

    # demo: a few hundred steps are enough for some copies of the duplicated 9
    n = 10
    run_demo(DemoConfig(train=TrainConfig(steps=250, batch_size=128, lr=2e-3, checkpoint_every=10_000, log_every=50),
                        hidden=64, n_samples=n, sample_steps=8, sharpness_t=(0.05, 0.1), headline_t=0.1,
                        trajectory_every=4, toy=ToyConfig(n=200, n_duplicates=40, steps=60, n_samples=40, hidden=32,
                                                          depth=2)), root / "demo")
    out["demo"] = root / "demo" / "report.html"

    # lid (model-free, on the demo's generations) and audit (the demo's checkpoint)
    x0 = np.stack([np.load(p) for p in sorted((root / "demo").glob("samples.npy"))])[0]
    labels = np.r_[np.full(n, 9), np.full(n, 3)].astype(np.int64)
    np.save(root / "classes.npy", labels)
    run_lid(LIDRunConfig(points=str(root / "demo" / "samples.npy"), estimator="lpca", data="digits"), root / "lid")
    out["lid"] = root / "lid" / "report.html"
    run_audit(AuditConfig(model=str(root / "demo" / "model"), points=str(root / "demo" / "samples.npy"),
                          labels=str(root / "classes.npy"), train_data="digits", t0=0.1), root / "audit")
    out["audit"] = root / "audit" / "report.html"
    assert x0.shape[0] == 2 * n

    # detect and mitigate: a random-weight caption model
    prompts = [{"prompt": "a photo of digit three number 17", "memorized": 1, "label": 3, "train_index": 0},
               {"prompt": "a digit three", "memorized": 0, "label": 3},
               {"prompt": "a photo of digit five number 4", "memorized": 1, "label": 5, "train_index": 1},
               {"prompt": "a digit five", "memorized": 0, "label": 5}]
    torch.manual_seed(0)
    shape = (1, 4, 4)
    model = CaptionDiffusionModel(CaptionModelConfig(
        data_shape=shape, vocab=build_vocab([p["prompt"] for p in prompts]), max_length=10, embed_dim=8, heads=1,
        hidden=16, depth=1, time_dim=8))
    save_caption_model(model, root / "caption")
    np.save(root / "train_x.npy", np.random.default_rng(0).uniform(-1, 1, (12, *shape)).astype(np.float32))
    write_prompts(root / "prompts.jsonl", prompts)
    run_detect(DetectConfig(model=str(root / "caption"), prompts=str(root / "prompts.jsonl"),
                            scores=("wen", "jeon", "sharpness"), generations=2, labels_from_field="memorized",
                            train_data=str(root / "train_x.npy"), sampling={"steps": 3}, attribution_max_prompts=2),
               root / "detect", progress=False)
    out["detect"] = root / "detect" / "report.html"
    run_mitigate(MitigateConfig(model=str(root / "caption"), prompts=str(root / "prompts.jsonl"),
                                methods=("none", "jain_delayed"), generations=2, steps=4, guidance=3.0,
                                train_data=str(root / "train_x.npy")), root / "mitigate", progress=False)
    out["mitigate"] = root / "mitigate" / "report.html"

    # collapse: two schedules of the Gaussian family (several metrics with and without theory)
    run_collapse(CollapseConfig(runs=40, generations=12, schedule=("constant", "linear"), per_run_csv=False),
                 root / "collapse")
    out["collapse"] = root / "collapse" / "report.html"
    return out


@pytest.mark.parametrize("name", ["demo", "detect", "mitigate", "lid", "audit", "collapse"])
def test_report_renders_without_overflow_and_with_every_image(chromium, reports, name, tmp_path):
    report = reports[name]
    html = report.read_text(encoding="utf-8")
    # notation in math symbols, never spelled out in ASCII
    assert "lambda sigma" not in html and "sigma^2" not in html and "+-" not in re.sub(r"<details.*?</details>", "",
                                                                                        html, flags=re.S)
    m = _measure(chromium, report, tmp_path)

    # the verdict box is the first thing after the title, before the contents and the sections
    order = [o for o in m["order"] if o != "script"]
    assert order[0] == "header" and order[1] == "section.verdict", order
    assert order.index("section.verdict") < order.index("main")

    # the page never scrolls sideways; every table fits inside its wrapper at this width
    assert m["page_overflow"] <= 0, m["page_overflow"]
    assert m["tables"], "a report without any table"
    for t in m["tables"]:
        assert t["wrapper"] == "table-wrap" and t["wrapper_scrolls"], t  # a wide table scrolls, never the page
        assert t["table_width"] <= t["wrapper_width"] + 1, f"{name}: table {t['i']} ({t['head']!r}) overflows: {t}"
        assert t["wrapper_right"] <= m["inner"], t

    # every image decoded (a broken data URI has naturalWidth 0) and shown inside its box
    assert m["images"], "a report without figures"
    for im in m["images"]:
        assert im["complete"] and im["natural"] > 0, f"{name}: image {im['i']} did not load: {im}"
        assert 0 < im["shown"] <= im["box"] + 1, im

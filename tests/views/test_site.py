"""The HTML report (``instsynth report``): every committed sample is in it, thumbnails are reused when a
unit is unchanged, and - in a real headless Chromium - the gallery shows the expected samples, a URL
filter shows only that class, and no image fails to load."""

import json
import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.output.ledger import committed_units
from instsynth.synth.driver import run_synth
from instsynth.synth.originals import write_originals
from instsynth.views.site import PAGE_SIZE, write_report
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
QUIET = {"log": lambda *a: None}


def _cfg(*sets):
    return load_config(os.path.join(ROOT, "configs", "debug.yaml"),
                       ["run.progress=false", "run.executor=local", "generator.name=recolor", "plan.top_k=8", *sets])


@pytest.fixture(scope="module")
def outputs(sample_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("site")
    synth, orig = str(base / "recolor"), str(base / "original")
    run_synth(sample_root, synth, _cfg(), **QUIET)
    write_originals(sample_root, orig, _cfg(), **QUIET)
    return synth, orig


def _samples(site: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(site)):
        if name.startswith("samples-") and name.endswith(".js"):
            for line in open(os.path.join(site, name)):
                if line.startswith("S("):
                    rows += json.loads(line[2:-3])
    return rows


def _committed(out):
    return sorted(w for m in committed_units(out).values() for w in m["work_ids"])


def test_report_holds_every_sample_and_reuses_unchanged_units(outputs, tmp_path):
    synth, orig = outputs
    site = str(tmp_path / "site")
    s = write_report([synth, orig], site, **QUIET)
    rows = _samples(site)
    assert sorted(r["w"] for r in rows) == sorted(_committed(synth) + _committed(orig))
    assert {"person", "rider"} <= {r["c"] for r in rows}  # top_k 8 selects people
    for r in rows:
        assert os.path.getsize(os.path.join(site, r["a"])) > 0
        assert r["g"] == "original" or (r["b"] and os.path.exists(os.path.join(site, r["b"])))
    page = open(os.path.join(site, "index.html")).read()
    for section in ("summary", "classes", "quality", "runs", "failures", "gallery"):
        assert f'id="{section}"' in page
    assert "http://" not in page and "https://" not in page  # no CDN: opens from disk
    units = s["units_decoded"]
    again = write_report([synth, orig], site, **QUIET)
    assert again["units_decoded"] == 0 and again["units_reused"] == units
    assert _samples(site) == rows
    # a redone unit (new hash in its marker) is rendered again; the others are reused
    unit = sorted(committed_units(synth))[0]
    cache = os.path.join(site, "cache", "d0", f"{unit}.json")
    entry = json.load(open(cache))
    entry["sha256"] = "0" * 64
    json.dump(entry, open(cache, "w"))
    third = write_report([synth, orig], site, **QUIET)
    assert third["units_decoded"] == 1


def test_report_lists_failures_with_their_source_files(outputs, tmp_path, sample_root):
    synth, _ = outputs
    bad = tmp_path / "bad"
    shutil.copytree(sample_root, bad)
    img = next(p for p in sorted((bad / "leftImg8bit" / "train").rglob("*.png")))
    img.write_bytes(img.read_bytes()[:200])  # truncated: a run-time failure
    out = str(tmp_path / "out")
    run_synth(str(bad), out, _cfg("run.max_failure_fraction=1.0"), **QUIET)
    write_report([out], str(tmp_path / "site"), **QUIET)
    page = open(tmp_path / "site" / "index.html").read()
    assert "stage <b>decode</b>" in page
    assert f'href="file://{img}"' in page


def test_report_refuses_missing_dirs_and_outs_inside_the_data(outputs, tmp_path, capsys):
    synth, _ = outputs
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no such output dir" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["report", synth, "--out", os.path.join(synth, "data", "r")]) == 2
    assert "lies inside" in capsys.readouterr().err


# -- in a real browser ----------------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI=true but no chromium on PATH (.ci/run installs Debian's chromium)")
    pytest.skip("headless Chromium not installed (apt-get install -y chromium); CI installs it")


def _browse(chromium: str, url: str, tmp, *extra) -> str:
    profile = tmp / "profile"
    env = {**os.environ, "HOME": str(tmp)}  # Chromium writes ~/.pki and friends: keep them in tmp
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-background-networking",
                        "--disable-gpu", "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
                        "--virtual-time-budget=10000", *extra, url],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _attr(dom: str, element_id: str, name: str) -> int:
    tag = re.search(rf'<[^>]*id="{element_id}"[^>]*>', dom).group(0)
    return int(re.search(rf'{name}="(\d+)"', tag).group(1))


def test_report_in_a_real_browser(outputs, tmp_path):
    chromium = _chromium()
    synth, orig = outputs
    site = tmp_path / "site"
    write_report([synth, orig], str(site), **QUIET)
    rows = _samples(str(site))
    url = (site / "index.html").as_uri()
    dom = _browse(chromium, url, tmp_path, "--dump-dom")
    cards = len({r["w"] for r in rows})
    assert _attr(dom, "grid", "data-total") == cards
    assert dom.count('class="sample"') == min(cards, PAGE_SIZE)
    assert _attr(dom, "img-status", "data-broken") == 0
    assert _attr(dom, "img-status", "data-loaded") == _attr(dom, "img-status", "data-total") > 0
    persons = {r["w"] for r in rows if r["c"] == "person"}
    assert persons
    dom = _browse(chromium, url + "#class=person", tmp_path, "--dump-dom")
    shown = re.findall(r'class="sample" data-class="([^"]+)"', dom)
    assert len(shown) == min(len(persons), PAGE_SIZE) and set(shown) == {"person"}
    assert _attr(dom, "img-status", "data-broken") == 0
    shot = tmp_path / "shot.png"
    _browse(chromium, url + "#class=person", tmp_path, f"--screenshot={shot}", "--window-size=1200,900")
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1200)
    # the filtered gallery comes first: its thumbnails (not a blank page) fill the screenshot
    assert float(np.std(img[200:, :].astype(np.float32))) > 20


def test_queue_depths_come_from_the_run_records_stage_intervals(outputs, tmp_path):
    from instsynth.views.status import stage_queues

    units = [{"stages": {"prepare": [100.0, 101.0], "generate": [102.0, 104.0], "commit": [105.0, 106.0]}},
             {"stages": {"prepare": [100.0, 102.0], "generate": [103.0, 105.0], "commit": [107.0, 108.0]}},
             {"unit": "local executor: no stages"}]
    q = stage_queues(units, step=0.5)
    at = {t: i for i, t in enumerate(q["t"])}
    assert q["queued"]["to generate"][at[1.0]] == 1 and q["running"]["prepare"][at[1.0]] == 1
    assert q["queued"]["to generate"][at[2.5]] == 1 and q["running"]["generate"][at[2.5]] == 1
    assert q["queued"]["to commit"][at[4.5]] == 1 and q["running"]["generate"][at[4.5]] == 1
    assert q["queued"]["to commit"][at[6.0]] == 1 and q["running"]["commit"][at[6.0]] == 0
    assert stage_queues([{"unit": "x"}])["t"] == []
    # the report draws them for a dir whose latest run recorded stages (the Ray executor does)
    synth = str(tmp_path / "recolor")
    shutil.copytree(outputs[0], synth)
    runs = os.path.join(synth, "_runs")
    latest = sorted(os.listdir(runs))[-1]
    record = json.load(open(os.path.join(runs, latest)))
    for k, u in enumerate(record["units"]):
        u["stages"] = {"prepare": [k, k + 1.0], "generate": [k + 2.0, k + 3.0], "commit": [k + 3.5, k + 4.0]}
    json.dump(record, open(os.path.join(runs, latest), "w"))
    # a later no-op resume (no units) does not hide the chart of the run that did the work
    noop = {"run": "zz-noop", "start": record["start"] + 1000, "end": record["start"] + 1001, "units": []}
    json.dump(noop, open(os.path.join(runs, "zz-noop.json"), "w"))
    site = str(tmp_path / "site")
    write_report([synth], site, **QUIET)
    assert cv2.imread(os.path.join(site, "queues-d0.png")) is not None
    assert 'src="queues-d0.png"' in open(os.path.join(site, "index.html")).read()

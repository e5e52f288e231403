"""`instsynth report DIR... [--out DIR]`: a static site a person browses - every sample, not a grid of 16.

Why a static site: outputs derived from Cityscapes may not go to the public Hub, so its viewer is no
option; a folder of HTML, JS and JPEG thumbnails opens from disk (``file://``) with no server and no
CDN.  Browsers block ``fetch()`` of ``file://`` URLs, so page data ships as ``<script src>`` files.

What it holds: per dir the card's summary (rows, units, failures, pending, models); per-class counts
(original / synthesized / visible) as a chart and a table; the Table IV-shaped quality table from the
stored per-sample numbers plus SSIM/PSNR of each focused crop against the same window of the
original (FID/KID/CLIPScore need weights: ``instsynth quality``); the run records (units per minute over
time, hosts); failures grouped by stage with their reasons and links to the source files; and a paged
gallery of every sample (before/after thumbnails with the instance outlined, prompt, generator,
per-sample scores), several dirs side by side aligned by ``work_id``, filterable by class and
generator with the filter in the URL (``index.html#class=person&generator=recolor&page=2``).

Cost: one streaming pass over each dir, unit by unit (memory stays flat: a unit's rows, one decoded
source image).  Each unit's thumbnails and numbers are cached under ``cache/`` keyed by the SHA-256 its
marker records, so a re-run decodes only units that are new or were redone.
"""

from __future__ import annotations

import html
import io
import json
import os
import time
from collections import Counter, defaultdict
from importlib import resources

import cv2
import numpy as np

from instsynth.datasets import DataError, Dataset, decode_image
from instsynth.io import storage
from instsynth.io.parquet import read_parquet
from instsynth.output.layout import LEDGER, part_path, plan_path
from instsynth.output.ledger import Ledger
from instsynth.output.readers import read_failures, read_part
from instsynth.output.schema import instance_mask, labels_of, visible
from instsynth.output.sources import label_space, source_dataset
from instsynth.plan.planner import read_plan
from instsynth.quality.metrics import SSIM_MAX_SIDE, psnr, ssim_map
from instsynth.quality.report import quality_chart
from instsynth.views.figures import figure_png
from instsynth.views.stats import add_failure_stats, add_row_stats, new_class_stats, stats_chart
from instsynth.views.status import check_output_dir, queues_chart

THUMB = (320, 160)  # (w, h) box a thumbnail fits in
PAGE_SIZE = 96  # gallery cards per page
JPEG_QUALITY = 85
CACHE_VERSION = 2  # 2: rows of any dataset (index maps + region tables)
QUALITY_KEYS = ("psnr_crop", "ssim_crop", "psnr_in", "psnr_out", "ssim_in", "ssim_out", "changed_inside",
                "inside_share", "clip")
SCORE_KEYS = ("clip", "psnr_in", "ssim_out", "changed_inside", "inside_share", "attempts")
COLUMNS = ["work_id", "image_id", "class_name", "generator", "prompt", "image", "labels", "regions", "instance_index",
           "instance_id", "crop_box", "source_image", "gen_stats", "width", "height"]


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes()


def _thumb(img: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    s = min(THUMB[0] / img.shape[1], THUMB[1] / img.shape[0], 1.0)
    size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA).copy()
    if mask is not None and mask.any():
        m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(small, contours, -1, (255, 255, 0), 2 if min(size) >= 96 else 1)
    return small


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


class _Source:
    """One decoded source image at a time (a unit's rows come grouped by source image)."""

    def __init__(self, ds: Dataset | None):
        self.ds, self.name, self.img = ds, None, None

    def window(self, row: dict) -> np.ndarray | None:
        if self.ds is None:
            return None
        if row["source_image"] != self.name:
            self.name, self.img = row["source_image"], self.ds.read_image(row["source_image"])
        x0, y0, x1, y1 = row["crop_box"]
        win = self.img[max(0, y0):y1, max(0, x0):x1]
        if win.shape[:2] != (row["height"], row["width"]):
            win = cv2.resize(win, (row["width"], row["height"]), interpolation=cv2.INTER_AREA)
        return win


def _unit_entries(out: str, key: str, d: str, unit: str, source: _Source, space) -> dict:
    """Thumbnails (written) and numbers of one unit's rows: {"samples": [...], "rows": [per-row stats]}."""
    samples, rows = [], []
    t = read_part(part_path(d, unit), COLUMNS)
    for r in t.to_pylist():
        after = decode_image(r["image"], r["work_id"])
        labels = labels_of(r)
        original = r["generator"] == "original"
        mask = None if original else instance_mask(r, labels)
        base = f"thumbs/{key}/{unit}/{r['work_id']}"
        storage.write_bytes(storage.join(out, base + ".a.jpg"), _jpeg(_thumb(after, mask)))
        stats = json.loads(r["gen_stats"] or "{}")
        before = None if original else source.window(r)
        b = ""
        if before is not None:
            storage.write_bytes(storage.join(out, base + ".b.jpg"), _jpeg(_thumb(before, mask)))
            b = base + ".b.jpg"
            whole = np.ones(before.shape[:2], bool)
            stats["psnr_crop"] = psnr(after, before, whole)
            stats["ssim_crop"] = float(ssim_map(after, before, SSIM_MAX_SIDE).mean())
        scores = {k: _round(stats[k]) for k in SCORE_KEYS + ("psnr_crop", "ssim_crop") if stats.get(k) is not None}
        samples.append({"w": r["work_id"], "c": r["class_name"] or "original", "g": r["generator"],
                        "p": r["prompt"], "s": scores, "a": base + ".a.jpg", "b": b, "i": r["image_id"],
                        "src": r["source_image"], "u": unit})
        rows.append({"generator": r["generator"], "class_name": r["class_name"], "gen_stats": r["gen_stats"],
                     "visible": visible(labels, space),
                     "quality": {k: stats[k] for k in QUALITY_KEYS if stats.get(k) is not None}})
    return {"samples": samples, "rows": rows}


class _Quality:
    """Running means per generator (and class) of the stored and crop-level numbers (flat memory)."""

    def __init__(self):
        self.sums = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
        self.n = Counter()

    def add(self, gen: str, cls: str, numbers: dict) -> None:
        self.n[gen] += 1
        for k, v in numbers.items():
            for scope in ((gen, "all"), (gen, cls)):
                acc = self.sums[scope][k]
                acc[0] += float(v)
                acc[1] += 1

    def table(self) -> dict:
        return {g: {"samples": n, **{k: s / c for k, (s, c) in self.sums[(g, "all")].items() if c}}
                for g, n in sorted(self.n.items())}


def _failures(d: str, ds: Dataset | None) -> list[dict]:
    """Failures of ``d`` (plan time and run time) with the source file each concerns."""
    out = []
    plan_fail = storage.join(d, "plan.failures.parquet")
    if storage.exists(plan_fail):
        for f in read_parquet(plan_fail).to_pylist():
            out.append({"stage": "plan", "id": f.get("image_id", ""), "reason": f.get("reason", ""),
                        "file": f.get("file") or ""})
    fails = read_failures(d).to_pylist()
    if fails:
        images = {}
        if storage.exists(plan_path(d)):
            table, _ = read_plan(plan_path(d))
            want = {f["work_id"] for f in fails}
            for w, img in zip(table.column("work_id").to_pylist(), table.column("image_path").to_pylist()):
                if w in want:
                    images[w] = img
        for f in fails:
            out.append({"stage": f["stage"], "id": f["work_id"], "reason": f["reason"],
                        "file": images.get(f["work_id"], "")})
    for f in out:
        f["href"] = _file_href(ds, f["file"]) if f["file"] else ""
    return out


def _file_href(ds: Dataset | None, rel: str) -> str:
    """A link to a source file: given relative to the dataset's image root (Cityscapes: its root)."""
    if ds is None:
        return ""
    path = rel if rel.startswith("/") or storage.is_uri(rel) else ds.image_path(rel)
    return path if storage.is_uri(path) else "file://" + os.path.abspath(path)


def _runs(d: str) -> list[dict]:
    paths = [storage.join(d, "_runs", n) for n in storage.list_names(storage.join(d, "_runs")) if n.endswith(".json")]
    runs = []
    for raw in storage.read_many(paths):
        if raw:
            try:
                runs.append(json.loads(raw))
            except ValueError:
                continue
    return sorted(runs, key=lambda r: r.get("start", 0))


def _latest_timed_units(runs: list[dict]) -> list[dict]:
    """The units of the latest run that recorded stage intervals (a no-op resume or a local run has none)."""
    return next((r["units"] for r in reversed(runs) if any(u.get("stages") for u in r.get("units", []))), [])


def runs_chart(runs_by_dir: dict[str, list[dict]]) -> bytes | None:
    """Units committed per minute over each run's time (PNG); None when no run committed anything."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for name, runs in runs_by_dir.items():
        for r in runs:
            times = sorted(u["committed_at"] - r["start"] for u in r.get("units", []) if "committed_at" in u)
            if times:
                series.append((f"{name} {r.get('run', '')}", times, max(r.get("end", 0) - r["start"], times[-1])))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    for label, times, dur in series:
        width = max(1.0, dur / 30)
        edges = np.arange(0, dur + width, width)
        counts, _ = np.histogram(times, edges)
        ax.step(edges[:-1], counts * 60 / width, where="post", label=f"{label} ({len(times)} units)")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("units committed per minute")
    ax.set_title("throughput over time")
    ax.legend(fontsize=7)

    return figure_png(fig)


def write_report(dirs: list[str], out: str, log=print) -> dict:
    """Write the site into ``out`` (``index.html`` + data scripts + images); returns a summary."""
    for d in dirs:
        check_output_dir(d)
    space = label_space(dirs)
    started = time.time()
    counts = new_class_stats()
    quality = _Quality()
    info, runs_by_dir, failures, script_names = [], {}, {}, []
    decoded = reused = 0
    for k, d in enumerate(dirs):
        key = f"d{k}"
        ledger = Ledger.open(d)
        good, bad = ledger.verified()
        try:  # the before panels need the source; without it the site shows the rows alone
            ds = source_dataset(d, optional=True)
        except DataError:
            ds = None
        source = _Source(ds)
        gens = Counter()
        name = f"samples-{key}.js"
        script_names.append(name)
        units = [u for u in sorted(good) if good[u]["rows"]]
        with storage.open_output(storage.join(out, name)) as js:
            js.write(b"/* generated by instsynth report: the samples of one output dir, unit by unit */\n")
            for n, u in enumerate(units):
                sha = good[u].get("data", {}).get("sha256", "")
                cache_path = storage.join(out, "cache", key, f"{u}.json")
                entry = None
                try:
                    cached = json.loads(storage.read_bytes(cache_path))
                    if sha and cached.get("sha256") == sha and cached.get("v") == CACHE_VERSION and \
                            cached.get("dir") == d:
                        entry = cached
                        reused += 1
                except (storage.StorageError, ValueError):
                    pass
                if entry is None:
                    entry = {"v": CACHE_VERSION, "dir": d, "sha256": sha,
                             **_unit_entries(out, key, d, u, source, space)}
                    storage.write_bytes(cache_path, json.dumps(entry).encode())
                    decoded += 1
                for s in entry["samples"]:
                    s["d"] = k
                js.write(b"S(" + json.dumps(entry["samples"], separators=(",", ":")).encode() + b");\n")
                for r in entry["rows"]:
                    add_row_stats(counts, r, Counter(r["visible"]))
                    gens[r["generator"]] += 1
                    if r["generator"] != "original":
                        quality.add(r["generator"], r["class_name"], r["quality"])
                if (n + 1) % 200 == 0:
                    log(f"report {d}: {n + 1}/{len(units)} units")
        for f in read_failures(d).to_pylist():
            add_failure_stats(counts, f)
        failures[key] = _failures(d, ds)
        runs_by_dir[key] = _runs(d)
        tot = ledger.totals(sorted(good))
        planned = None
        if storage.exists(plan_path(d)):
            import pyarrow.parquet as pq

            planned = pq.read_metadata(io.BytesIO(storage.read_bytes(plan_path(d)))).num_rows
        info.append({"key": key, "dir": d, "name": os.path.basename(d.rstrip("/")) or d,
                     "generators": dict(gens), "rows": tot["rows"], "units": len(good), "damaged_units": len(bad),
                     "failed_items": tot["failures"], "planned": planned,
                     "pending": None if planned is None else max(planned - len(ledger.covered_ids(good)), 0),
                     "models": [" ".join(x for x in m if x) for m in tot["models"]],
                     "failure_stages": tot["failure_stages"],
                     "root": (ds.spec.image_root or ds.spec.source) if ds else ""})
    stats = {k: v for k, v in counts.items()}
    qtable = quality.table()
    images = {"class_counts.png": stats_chart(stats, space.evaluated, f"instances per class ({space.name})")
              if stats else None, "quality.png": quality_chart(qtable),
              "runs.png": runs_chart({i["name"]: runs_by_dir[i["key"]] for i in info}),
              **{f"queues-{i['key']}.png": queues_chart(_latest_timed_units(runs_by_dir[i["key"]]),
                                                          f"{i['name']}: where units waited in its latest Ray run")
                 for i in info}}
    for n, png in images.items():
        if png:
            storage.write_bytes(storage.join(out, n), png)
    order = {c: i for i, c in enumerate(space.evaluated)}
    classes = sorted({c for s in stats.values() for c in s["synthesized"]}, key=lambda c: (order.get(c, len(order)), c))
    meta = {"dirs": info, "classes": classes, "generators": sorted({g for i in info for g in i["generators"]}),
            "page_size": PAGE_SIZE}
    storage.write_bytes(storage.join(out, "report-data.js"),
                        ("window.REPORT = " + json.dumps(meta, indent=1) + ";\n").encode())
    for asset in ("report.js", "report.css"):
        storage.write_bytes(storage.join(out, asset), resources.files("instsynth.views.static").joinpath(asset).read_bytes())
    page = _index_html(info, stats, space.evaluated, qtable, runs_by_dir, failures, script_names,
                       {n for n, png in images.items() if png})
    storage.write_bytes(storage.join(out, "index.html"), page.encode())
    rows = sum(i["rows"] for i in info)
    summary = {"out": out, "index": storage.join(out, "index.html"), "rows": rows, "units_decoded": decoded,
               "units_reused": reused, "seconds": time.time() - started}
    log(f"wrote {summary['index']}: {rows} samples from {len(dirs)} dirs "
        f"({decoded} units rendered, {reused} reused from the cache) in {summary['seconds']:.1f} s")
    return summary


def _e(v) -> str:
    return html.escape(str(v))


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _table(head: list[str], rows: list[list], cls: str = "") -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _index_html(info, stats, classes, qtable, runs_by_dir, failures, scripts, images) -> str:
    parts = []
    # summary
    rows = [[_e(i["name"]), _e(", ".join(i["generators"]) or "–"), i["rows"], i["units"], i["failed_items"],
             _fmt(i["planned"]), _fmt(i["pending"]), i["damaged_units"], _e("; ".join(i["models"]) or "–")]
            for i in info]
    parts.append('<section id="summary"><h2>Output dirs</h2>' + _table(
        ["dir", "generator", "rows", "units", "failed items", "planned", "pending", "damaged units", "models"],
        rows) + "".join(f'<p class="path">{_e(i["name"])}: <code>{_e(storage.absolute(i["dir"]))}</code></p>' for i in info)
        + "</section>")
    # classes
    sources = sorted(stats, key=lambda s: (s != "original", s))
    head = ["class"] + [f"{s} visible" if s == "original" else f"{s} synthesized / visible" for s in sources]
    crow = []
    for c in classes:
        if not any(stats[s]["visible"][c] or stats[s]["synthesized"][c] for s in sources):
            continue  # a large label space (COCO's 80): only the classes the dirs hold
        crow.append([c] + [str(stats[s]["visible"][c]) if s == "original" else
                           f"{stats[s]['synthesized'][c]} / {stats[s]['visible'][c]}" for s in sources])
    img = '<img src="class_counts.png" alt="instances per class">' if "class_counts.png" in images else ""
    parts.append('<section id="classes"><h2>Instances per class</h2>' + img + _table(head, crow, "num") +
                 "<p class=note>visible: every evaluated-class instance in every crop (Table I); synthesized: "
                 "one per row.</p></section>")
    # quality
    cols = [("samples", "samples"), ("SSIM crop", "ssim_crop"), ("PSNR crop", "psnr_crop"), ("SSIM in", "ssim_in"),
            ("SSIM out", "ssim_out"), ("PSNR in", "psnr_in"), ("PSNR out", "psnr_out"),
            ("changed in", "changed_inside"), ("in share", "inside_share"), ("region CLIP", "clip")]
    qrows = [[_e(g)] + [_fmt(r.get(k)) for _, k in cols] for g, r in qtable.items()]
    img = '<img src="quality.png" alt="quality chart">' if "quality.png" in images else ""
    parts.append('<section id="quality"><h2>Generation quality (Table IV shape)</h2>' +
                 (_table(["generator"] + [c for c, _ in cols], qrows, "num") if qrows else "<p>no synthesized rows</p>")
                 + img + "<p class=note>SSIM/PSNR crop: each focused crop against the same window of the original "
                 "image; in/out: the generator's raw output inside/outside the instance mask (stored per sample). "
                 "FID, KID and CLIPScore need model weights: <code>instsynth quality</code>.</p></section>")
    # runs
    rrows = []
    for i in info:
        for r in runs_by_dir[i["key"]]:
            dur = r.get("end", r.get("start", 0)) - r.get("start", 0)
            hosts = sorted({h.split(" ")[0] for v in (r.get("hosts") or {}).values() for h in v})
            rrows.append([_e(i["name"]), _e(r.get("run", "")), _e(time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                time.gmtime(r.get("start", 0)))),
                          f"{dur:.1f} s", len(r.get("units", [])), r.get("rows_committed", 0),
                          f"{r.get('rows_per_s', 0):.2f}", _e(r.get("executor", "")), _e(", ".join(hosts) or "–")])
    img = '<img src="runs.png" alt="units per minute over time">' if "runs.png" in images else ""
    img += "".join(f'<img src="{n}" alt="queue depths over the latest Ray run of {_e(i["name"])}">'
                   for i in info for n in [f"queues-{i['key']}.png"] if n in images)
    parts.append('<section id="runs"><h2>Runs</h2>' + (_table(
        ["dir", "run", "started", "took", "units", "rows", "rows/s", "executor", "hosts"], rrows) if rrows else
        "<p>no run records</p>") + img + "</section>")
    # failures
    fparts = []
    for i in info:
        by_stage = defaultdict(list)
        for f in failures[i["key"]]:
            by_stage[f["stage"]].append(f)
        for stage, fs in sorted(by_stage.items()):
            items = "".join(
                f'<li><code>{_e(f["id"])}</code>: {_e(f["reason"])}'
                + (f' — <a href="{_e(f["href"])}">{_e(f["file"])}</a>' if f["href"] else
                   (f" — {_e(f['file'])}" if f["file"] else "")) + "</li>" for f in fs[:500])
            more = f"<li>… and {len(fs) - 500} more</li>" if len(fs) > 500 else ""
            fparts.append(f'<details open><summary>{_e(i["name"])}: stage <b>{_e(stage)}</b> — {len(fs)} '
                          f'failures</summary><ul class="failures">{items}{more}</ul></details>')
    parts.append('<section id="failures"><h2>Failures</h2>' + ("".join(fparts) or "<p>no failures</p>") +
                 "</section>")
    parts.append('<section id="gallery"><h2>Samples</h2><div id="filters"></div><div class="pager" id="pager-top">'
                 '</div><div id="grid"></div><div class="pager" id="pager-bottom"></div>'
                 '<p id="img-status" class="note"></p></section>')
    nav = "".join(f'<a href="#{s}">{t}</a>' for s, t in (("summary", "dirs"), ("classes", "classes"),
                                                          ("quality", "quality"), ("runs", "runs"),
                                                          ("failures", "failures"), ("gallery", "samples")))
    scripts_html = "".join(f'<script src="{_e(s)}"></script>' for s in scripts)
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>InstSynth report</title>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            '<link rel=stylesheet href="report.css"></head><body>'
            f'<header><h1>InstSynth report</h1><nav>{nav}</nav></header><main>{"".join(parts)}</main>'
            '<script>window.SAMPLES = []; function S(rows) { Array.prototype.push.apply(window.SAMPLES, rows); }'
            '</script><script src="report-data.js"></script>' + scripts_html +
            '<script src="report.js"></script></body></html>\n')


def check_report_out(out: str, dirs: list[str]) -> None:
    """Refuse an ``--out`` inside an output dir's data layout (it would be read as data) - one line."""
    for d in dirs:
        for sub in ("data", "_commits", "_failures", "_claims", LEDGER):
            p = storage.join(d, sub)
            if out.rstrip("/") == p or out.startswith(p + "/"):
                raise DataError(f"--out {out} lies inside {p}; choose e.g. {storage.join(d, 'report')}")

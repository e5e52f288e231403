"""What people look at: run status, per-class counts (table + bar chart), and a preview grid.

Counting follows the paper's Table I: besides one synthesized instance per row, every focused crop
shows several more instances; "visible" counts every instance of an evaluated class of the dirs' label
space in every crop (the original dirs' visible instances are the original split's).  All readers
stream unit by unit and read rows of either row format (``schema.normalize``).
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import cv2
import numpy as np

from instsynth import shards, storage
from instsynth.datasets import DataError, decode_image
from instsynth.outputs import label_space, source_dataset
from instsynth.schema import instance_mask, labels_of, visible


class NotAnOutput(DataError):
    """A path given to a read-only command is missing or is not an InstSynth output dir."""


def check_output_dir(out: str) -> None:
    """One line naming ``out`` when it is missing or holds neither a plan nor commits."""
    if not storage.exists(out):
        raise NotAnOutput(f"{out}: no such output dir")
    names = set(storage.list_names(out))
    if not names & {"plan.parquet", "_commits", "data", "config.yaml"}:
        raise NotAnOutput(f"{out}: not an InstSynth output dir (no plan.parquet, _commits/ or data/)")


def status(out: str, verify: bool = False) -> dict:
    """Committed vs planned items; shards that do not match their markers (sizes, from one LIST per
    folder; ``verify``: every file read once - SHA-256, Parquet footer, row count and every PNG of
    every shard decoded from the same bytes, units in parallel).  Every bad shard is listed."""
    from instsynth.plan import read_plan

    check_output_dir(out)
    planned_ids = None
    if storage.exists(shards.plan_path(out)):
        planned_ids = read_plan(shards.plan_path(out))[0].column("work_id").to_pylist()
    ledger = shards.Ledger(out)
    ledger.scan()
    bad, bad_rows = shards.verify_full(out, ledger.markers, decode=True) if verify else (ledger.verify_sizes(), [])
    good = {u: m for u, m in ledger.markers.items() if u not in bad}
    done = shards.covered_ids(good)
    st = {"out": out, "units": len(good), "rows": sum(m["rows"] for m in good.values()),
          "failed": sum(m["failures"] for m in good.values()),
          "planned": None if planned_ids is None else len(planned_ids),
          "pending": None if planned_ids is None else sum(1 for w in planned_ids if w not in done),
          "bad_shards": [p for u in sorted(bad) for p in bad[u]], "bad_rows": bad_rows}
    if verify:
        st["verified"] = True
    return st


def format_status(st: dict) -> str:
    lines = [f"{st['out']}: {st['units']} committed units, {st['rows']} rows, {st['failed']} failed items"]
    if st["planned"] is not None:
        lines.append(f"planned {st['planned']} items: {st['pending']} pending")
    if st["bad_shards"]:
        lines.append(f"{len(st['bad_shards'])} damaged files (their units are re-queued by the next synth run "
                     "or synth --repair):" + "".join(f"\n  {b}" for b in st["bad_shards"]))
    if st.get("verified"):
        lines.append(f"verified every shard's SHA-256 and every PNG: {len(st['bad_rows'])} bad rows" +
                     "".join(f"\n  {b}" for b in st["bad_rows"][:20]))
    return "\n".join(lines)


#: the waits between the Ray executor's stages, as (name, stage it follows, stage it waits for)
QUEUES = (("to generate", "prepare", "generate"), ("to commit", "generate", "commit"))


def stage_queues(units: list[dict], step: float = 0.5) -> dict:
    """Queue depths over time from a run record's units (``_runs/<run>.json``, each with its stages'
    wall-clock ``[start, end]``): at each time, the units whose previous stage has ended and whose next
    has not begun (waiting in Ray Data's queues or in transit), and the units inside each stage.  Times
    are seconds from the first stage start; clocks of different nodes are taken as they are."""
    timed = [u["stages"] for u in units if u.get("stages")]
    if not timed:
        return {"t": [], "queued": {}, "running": {}}
    t0 = min(iv[0] for st in timed for iv in st.values())
    t1 = max(iv[1] for st in timed for iv in st.values())
    t = np.arange(0.0, t1 - t0 + step, step)
    queued = {name: np.zeros(len(t), np.int64) for name, _, _ in QUEUES}
    running = {stage: np.zeros(len(t), np.int64) for stage in sorted({k for st in timed for k in st})}
    for st in timed:
        for stage, (a, b) in st.items():
            running[stage] += (t >= a - t0) & (t < b - t0)
        for name, before, after in QUEUES:
            if before in st and after in st:
                queued[name] += (t >= st[before][1] - t0) & (t < st[after][0] - t0)
    return {"t": t.tolist(), "queued": {k: v.tolist() for k, v in queued.items()},
            "running": {k: v.tolist() for k, v in running.items()}}


def queues_chart(units: list[dict], title: str, window: tuple[float, float] | None = None) -> bytes | None:
    """Queue depths and stage occupancy over a run (PNG, from ``stage_queues``); None without stage
    intervals (the local executor records none).  ``window``: a span (seconds) to shade, e.g. a steady state."""
    q = stage_queues(units, step=0.25)
    if not q["t"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
    for k, v in q["queued"].items():
        ax.plot(q["t"], v, label=f"queued {k}", lw=1.4)
    for k, v in q["running"].items():
        ax.plot(q["t"], v, label=f"in {k}", lw=1.0, ls="--")
    if window:
        ax.axvspan(*window, color="grey", alpha=0.12, label="steady state")
    ax.set_xlabel("seconds since the first stage started")
    ax.set_ylabel("units")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    return figure_png(fig)


def new_class_stats() -> dict:
    """{source: {"synthesized", "visible", "accepted", "retried", "rejected": Counter, "rows": n}}, source = generator."""
    return defaultdict(lambda: {"synthesized": Counter(), "visible": Counter(), "rows": 0,
                                "accepted": Counter(), "retried": Counter(), "rejected": Counter()})


def add_row_stats(out: dict, r: dict, visible: Counter) -> None:
    """Count one row (generator, class_name, gen_stats) and the instances ``visible`` in its crop."""
    s = out[r["generator"]]
    s["rows"] += 1
    if r["generator"] != "original":
        s["synthesized"][r["class_name"]] += 1
        s["accepted"][r["class_name"]] += 1
        if json.loads(r["gen_stats"] or "{}").get("attempts", 1) > 1:
            s["retried"][r["class_name"]] += 1
    s["visible"].update(visible)


def add_failure_stats(out: dict, f: dict) -> None:
    """Count a recorded failure: samples the quality filter rejected on every try."""
    if f["stage"] == "filter":
        details = json.loads(f["details"] or "{}")
        out[details.get("generator", "?")]["rejected"][details.get("class_name", "?")] += 1


def class_stats(dirs: list[str], space=None) -> dict:
    """``new_class_stats`` filled from every committed row and failure of ``dirs`` (streamed)."""
    out = new_class_stats()
    space = space or label_space(dirs)
    for d in dirs:
        for t in shards.iter_tables(d, ["generator", "class_name", "labels", "regions", "work_id", "gen_stats"]):
            for r in t.to_pylist():
                add_row_stats(out, r, Counter(visible(labels_of(r), space)))
        for f in shards.read_failures(d).to_pylist():
            add_failure_stats(out, f)
    return {k: v for k, v in out.items()}


def format_stats(stats: dict, classes: list[str]) -> str:
    sources = sorted(stats, key=lambda s: (s != "original", s))
    w = max([12] + [len(c) + 1 for c in classes])  # Vistas' names are long: human--rider--bicyclist
    header = f"{'class':<{w}}" + "".join(
        f"{(s + ' visible') if s == 'original' else s + ' synth/visible':>26}" for s in sources) + f"{'all visible':>14}"
    lines = [header]
    totals = Counter()
    for c in classes:
        cells = []
        allv = 0
        for s in sources:
            v = stats[s]["visible"][c]
            allv += v
            cells.append(f"{v:>26}" if s == "original" else f"{str(stats[s]['synthesized'][c]) + ' / ' + str(v):>26}")
        totals[c] = allv
        lines.append(f"{c:<{w}}" + "".join(cells) + f"{allv:>14}")
    lines.append(f"{'total':<{w}}" + "".join(
        f"{sum(stats[s]['visible'].values()):>26}" if s == "original" else
        f"{str(sum(stats[s]['synthesized'].values())) + ' / ' + str(sum(stats[s]['visible'].values())):>26}"
        for s in sources) + f"{sum(totals.values()):>14}")
    gens = [s for s in sources if s != "original"]
    if gens:
        lines.append("")
        lines.append(f"{'class':<{w}}" + "".join(f"{g + ' accepted/retried/rejected':>36}" for g in gens))
        for c in classes:
            lines.append(f"{c:<{w}}" + "".join(
                f"{str(stats[g]['accepted'][c]) + ' / ' + str(stats[g]['retried'][c]) + ' / ' + str(stats[g]['rejected'][c]):>36}"
                for g in gens))
    return "\n".join(lines)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tight), closed afterwards."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def stats_chart(stats: dict, classes: list[str], title: str = "instances per class") -> bytes:
    """A grouped bar chart (PNG bytes): visible instances per class and source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted(stats, key=lambda s: (s != "original", s))
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(sources))
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for i, s in enumerate(sources):
        bars = ax.bar(x + i * width, [stats[s]["visible"][c] for c in classes], width, label=f"{s} (visible)")
        ax.bar_label(bars, fontsize=7)
        if s != "original":  # solid, not translucent: the legend swatch then shows the bars' own colour
            inner = ax.bar(x + i * width, [stats[s]["synthesized"][c] for c in classes], width * 0.5,
                           color="#333333", label=f"{s} (synthesized)")
            ax.bar_label(inner, label_type="center", color="white", fontsize=6)
    ax.set_xticks(x + width * (len(sources) - 1) / 2, classes, rotation=20 if len(classes) < 20 else 90)
    ax.set_ylabel("instances")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return figure_png(fig)


def write_stats(dirs: list[str], out: str) -> tuple[str, dict]:
    space = label_space(dirs)
    stats = class_stats(dirs, space)
    text = format_stats(stats, space.evaluated)
    storage.write_bytes(storage.join(out, "class_counts.txt"), (text + "\n").encode())
    storage.write_bytes(storage.join(out, "class_counts.json"), json.dumps(
        {s: {k: dict(v) if isinstance(v, Counter) else v for k, v in d.items()} for s, d in stats.items()},
        indent=1).encode())
    storage.write_bytes(storage.join(out, "class_counts.png"),
                        stats_chart(stats, space.evaluated, f"instances per class ({space.name})"))
    return text, stats


def grid_png(tiles: list[np.ndarray], cols: int) -> bytes:
    """Equal-size RGB tiles laid out ``cols`` per row (the last row padded black), as PNG bytes."""
    blank = np.zeros_like(tiles[0])
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    grid = np.vstack([np.hstack(r + [blank] * (cols - len(r))) for r in rows])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return buf.tobytes()


def preview(out: str, n: int = 16, tile: tuple[int, int] = (384, 192), cols: int = 4) -> bytes:
    """A grid PNG of the first ``n`` committed rows: crop, instance outline, prompt."""
    tiles = []
    for t in shards.iter_tables(out, ["image", "labels", "regions", "instance_index", "instance_id", "prompt", "work_id",
                                      "generator"]):
        for r in t.to_pylist():
            img = decode_image(r["image"], r["work_id"])
            mask = instance_mask(r)
            sx, sy = tile[0] / img.shape[1], tile[1] / img.shape[0]
            s = min(sx, sy)
            small = cv2.resize(img, (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))),
                               interpolation=cv2.INTER_AREA)
            canvas = np.zeros((tile[1] + 22, tile[0], 3), np.uint8)
            canvas[:small.shape[0], :small.shape[1]] = small
            if mask is not None:
                mask = cv2.resize(mask.astype(np.uint8), (small.shape[1], small.shape[0]),
                                  interpolation=cv2.INTER_NEAREST)
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(canvas, contours, -1, (255, 255, 0), 2)
            label = r["prompt"] or f"{r['generator']}: {r['work_id']}"
            cv2.putText(canvas, label[:48], (4, tile[1] + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(canvas)
            if len(tiles) >= n:
                break
        if len(tiles) >= n:
            break
    if not tiles:
        raise DataError(f"{out}: no committed rows to preview")
    return grid_png(tiles, cols)


def fit(img: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """``img`` scaled (area) to fit inside ``box`` (w, h), aspect kept."""
    s = min(box[0] / img.shape[1], box[1] / img.shape[0])
    size = (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def compare_pairs(out: str, n: int = 8, class_name: str | None = None, generator: str | None = None):
    """(row, before, after) for the first ``n`` committed rows matching the filters: ``before`` is the
    source window (``crop_box`` of ``source_image`` under the recorded root, at the row's size),
    ``after`` the synthesized crop.  Streams unit by unit."""
    ds = source_dataset(out)
    got = 0
    cols = ["work_id", "image", "labels", "regions", "instance_index", "instance_id", "class_name", "generator",
            "prompt", "crop_box", "source_image", "gen_stats", "width", "height"]
    for t in shards.iter_tables(out, cols):
        for r in t.to_pylist():
            if (class_name and r["class_name"] != class_name) or (generator and r["generator"] != generator):
                continue
            after = decode_image(r["image"], r["work_id"])
            x0, y0, x1, y1 = r["crop_box"]
            before = ds.read_image(r["source_image"])[max(0, y0):y1, max(0, x0):x1]
            if before.shape[:2] != after.shape[:2]:  # compose.resize: compare at the row's size
                before = cv2.resize(before, (after.shape[1], after.shape[0]), interpolation=cv2.INTER_AREA)
            yield r, before, after
            got += 1
            if got >= n:
                return


SCORE_KEYS = ("clip", "psnr_in", "changed_inside", "inside_share", "attempts")


def compare_grid(out: str, n: int = 8, class_name: str | None = None, generator: str | None = None,
                 tile: tuple[int, int] = (384, 192), cols: int = 2) -> bytes:
    """PNG grid of before/after pairs: source window | synthesized window, the instance outlined in
    both, the prompt and the per-sample scores under each pair - a generator judged at a glance."""
    text_h = 40
    tiles = []
    for r, before, after in compare_pairs(out, n, class_name, generator):
        inst = instance_mask(r)
        inst = inst if inst is not None else np.zeros(after.shape[:2], bool)
        canvas = np.zeros((tile[1] + text_h, 2 * tile[0] + 6, 3), np.uint8)
        for k, img in enumerate((before, after)):
            small = fit(img, tile)
            mask = cv2.resize(inst.astype(np.uint8), (small.shape[1], small.shape[0]),
                              interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            x = k * (tile[0] + 6)
            canvas[:small.shape[0], x:x + small.shape[1]] = small
            cv2.drawContours(canvas[:, x:x + small.shape[1]], contours, -1, (255, 255, 0), 1)
            cv2.putText(canvas, ("source", "synthesized")[k], (x + 4, 12),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        stats = json.loads(r["gen_stats"] or "{}")
        scores = "  ".join(f"{k}={stats[k]:.3g}" if isinstance(stats[k], float) else f"{k}={stats[k]}"
                           for k in SCORE_KEYS if k in stats)
        cv2.putText(canvas, f"{r['generator']}: {r['prompt']}"[:70], (4, tile[1] + 15), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(canvas, (scores or "no per-sample scores")[:80], (4, tile[1] + 33), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (200, 200, 200), 1, cv2.LINE_AA)
        tiles.append(canvas)
    if not tiles:
        what = ", ".join(f"{k} {v}" for k, v in (("class", class_name), ("generator", generator)) if v)
        raise DataError(f"{out}: no committed rows to compare" + (f" for {what}" if what else ""))
    return grid_png(tiles, cols)

"""``instsynth stats``: per-class counts of output dirs (a table and a bar chart).

Counting follows the paper's Table I: besides one synthesized instance per row, every focused crop
shows several more instances; "visible" counts every instance of an evaluated class of the dirs' label
space in every crop (the original dirs' visible instances are the original split's).  All readers
stream unit by unit and read rows of either row format (``schema.normalize``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np

from instsynth.io import storage
from instsynth.output.readers import iter_tables, read_failures
from instsynth.output.schema import labels_of, visible
from instsynth.output.sources import label_space
from instsynth.views.figures import figure_png


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
        for t in iter_tables(d, ["generator", "class_name", "labels", "regions", "work_id", "gen_stats"]):
            for r in t.to_pylist():
                add_row_stats(out, r, Counter(visible(labels_of(r), space)))
        for f in read_failures(d).to_pylist():
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

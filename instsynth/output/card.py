"""The dataset card written into every output dir (README.md): what it is, how made, licence."""

from __future__ import annotations

import subprocess

import yaml

from instsynth import __version__
from instsynth.config import Config, to_yaml
from instsynth.datasets import LabelSpace
from instsynth.io import storage
from instsynth.output.ledger import Ledger
from instsynth.output.schema import ARROW_TO_HF, ROW_FORMAT, hf_features, markdown_table
from instsynth.output.sources import output_dataset


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=__file__.rsplit("/", 2)[0], timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        sha = ""
    return f"{__version__}" + (f" ({sha})" if sha else "")


LICENCE = {"cityscapes": """Derived from the Cityscapes dataset (or a dataset in its layout). The Cityscapes terms of use
apply: non-commercial research and teaching only, cite Cordts et al. (CVPR 2016), and **data derived
from Cityscapes may not be redistributed** - do not upload it to a public Hugging Face repository or
share it outside your group; keep it private to the people who hold a Cityscapes licence. Generated
pixels come from the models listed below, each under its own licence (e.g. CreativeML Open RAIL++-M for
SDXL). The embedded sample of InstSynth is synthetic and carries no Cityscapes pixels.""",
           "other": """Derived from the source dataset named below: its terms of use apply to these rows (COCO's
annotations are CC BY 4.0 and its images under their Flickr licences; check your own data's licence before
sharing). Generated pixels come from the models listed below, each under its own licence (e.g. CreativeML
Open RAIL++-M for SDXL). The embedded sample of InstSynth is synthetic."""}


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def data_files(ledger, good: list[str], glob: bool = True) -> list[str]:
    """The card's ``data_files``: the glob when the folder holds exactly the good units' files (so
    ``load_dataset`` resolves one pattern, not 12k paths), else each good file by name.  A run
    writes the explicit list before it starts committing (``glob=False``), so a run that crashes
    leaves a card that names committed files only."""
    names = sorted(ledger.markers[u]["data"]["file"] if "data" in ledger.markers[u] else f"part-{u}.parquet"
                   for u in good if ledger.markers[u]["rows"])
    listed = {n for n, size in ledger.listing.get("data", {}).items() if size is not None}
    if glob and names and listed == set(names) and all(n.startswith("part-") for n in names):
        return ["data/part-*.parquet"]
    return [f"data/{n}" for n in names] or ["data/*.parquet"]


def front_matter(rows: int, generator: str, files: list[str], space: LabelSpace, row_format: int) -> str:
    """The card's YAML header: licence, task, tags, size, features and ``configs`` listing exactly the
    committed shards, so ``load_dataset(OUT)`` (and the Hub) read those and nothing else in OUT."""
    cs = space.name == "cityscapes"
    meta = {
        "license": "other",
        "license_name": "cityscapes-derived" if cs else "source-dataset-derived",
        "license_details": "Derived from Cityscapes: non-commercial research only; must not be redistributed."
        if cs else f"Derived from {space.name}: the source dataset's terms apply.",
        "pretty_name": f"IS-{'Cityscapes' if cs else space.name} ({generator})",
        "task_categories": ["image-segmentation"],
        "task_ids": ["instance-segmentation"],
        "tags": (["cityscapes", "urban-scenes"] if cs else []) + ["synthetic", "diffusion", "inpainting", "instsynth"],
        "size_categories": [size_category(rows)],
        "dataset_info": {"features": hf_features(space) if row_format == ROW_FORMAT else legacy_features()},
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": files}]}],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000) + "---\n"


def legacy_features() -> list[dict]:
    """Features of row format 1 (outputs written before label spaces; never rewritten)."""
    cols = [("work_id", "string"), ("image_id", "string"), ("split", "string"), ("city", "string"),
            ("instance_id", "int32"), ("class_name", "string"), ("image", None), ("instance_ids", None),
            ("width", "int32"), ("height", "int32"), ("bbox", 4), ("crop_box", 4), ("square_box", 4),
            ("lam", "double"), ("prompt", "string"), ("negative_prompt", "string"), ("generator", "string"),
            ("model_id", "string"), ("model_revision", "string"), ("seed", "int64"), ("gen_seed", "int64"),
            ("variant", "int32"), ("source_image", "string"), ("gen_stats", "string")]
    return [{"name": n, "dtype": "image"} if t is None else {"name": n, "list": "int32", "length": 4}
            if t == 4 else {"name": n, "dtype": ARROW_TO_HF[t]} for n, t in cols]


def write_card(out: str, cfg: Config, summary: dict, ledger=None, generator: str | None = None,
               glob: bool = True) -> str:
    """Rewritten after every run and repair, from verified units only (``summary['damaged_units']``),
    and from their markers only: class counts and models travel in each marker's ``stats``, so no
    data file is read (markers older than that: ``Ledger.stats`` reads their files once).
    ``generator="original"``: the card of an ``instsynth originals`` dir (full frames, no synthesis)."""
    generator = generator or cfg.generator.name
    if ledger is None:
        ledger = Ledger.open(out)
    damaged = set(summary.get("damaged_units", []))
    good = [u for u in sorted(ledger.markers) if u not in damaged]
    tot = ledger.totals(good)

    with_rows = [ledger.markers[u] for u in good if ledger.markers[u]["rows"]]
    fmt = ROW_FORMAT if not with_rows or with_rows[0].get("v", 1) >= 3 else 1
    return render_card(out, cfg, summary, generator, tot["classes"], tot["models"], data_files(ledger, good, glob),
                       output_dataset(out)[1], fmt)


def render_card(out: str, cfg: Config, summary: dict, generator: str, per_class: dict, models,
                files: list[str], space: LabelSpace, row_format: int = ROW_FORMAT) -> str:
    """The card text from counts (shared by output dirs and ``export --format parquet``); written to OUT."""
    rows = "\n".join(f"| {c or '(none: original frames)'} | {n} |" for c, n in sorted(per_class.items())) \
        or "| (none) | 0 |"
    model_lines = "\n".join(f"- generator `{g}`, model `{m or '-'}`, revision `{r or '-'}`"
                            for g, m, r in sorted(models)) or f"- generator `{generator}`"
    if generator == "original":
        what = (f"The original `{cfg.plan.split}` images of the source dataset as InstSynth rows, written by "
                f"InstSynth {code_version()}: full frames with their label maps (generator `original`, "
                "no synthesis), so 'original + synthetic' training reads one schema.")
    else:
        what = (f"Instance-segmentation training data synthesized by InstSynth {code_version()}: the top-"
                f"{cfg.plan.top_k}\ninstances of each source image were re-generated by `{generator}` from a "
                "category-driven prompt,\npasted back through their masks and cut into focused 2:1 crops "
                f"(lambda ~ N({cfg.compose.lam_mean}, {cfg.compose.lam_sd})).")
    if row_format == ROW_FORMAT:
        fmt = (f"Row format {ROW_FORMAT}: `labels` is a 16-bit index map (0 = unlabelled, k = `regions[k-1]`) and "
               "`regions` its table (the dataset's own id, class id and name, thing and crowd flags); `class_label` "
               "is a `ClassLabel` of the label space below.")
        cls_line = (f"- label space `{space.name}`: " + ", ".join(f"{c.id} {c.name}" for c in space.classes[:100])
                    + (" ..." if len(space.classes) > 100 else ""))
    else:
        fmt = ("Row format 1 (written before datasets other than Cityscapes were read; read everywhere, never "
               "rewritten): `instance_ids` is the 16-bit instanceIds map (classId*1000+k).")
        cls_line = "- label space `cityscapes`"
    schema = f"\n## Schema\n{markdown_table()}\n" if row_format == ROW_FORMAT else ""
    title = "IS-Cityscapes" if space.name == "cityscapes" else f"InstSynth ({space.name})"
    text = front_matter(summary["committed_rows"], generator, files, space, row_format) + f"""# {title} shard set ({generator})

{what}

## Contents
- committed rows: {summary['committed_rows']} (planned {summary['planned']}, failed {summary['failed_items']},
  pending {summary['pending_items']})
- rows are in the `data/part-*.parquet` files listed in the header above (only committed units; the schema
  is below). Open them with `datasets.load_dataset("<this dir>", split="train")`: the PNG columns decode to
  PIL images (16-bit maps: `np.array(...)` gives the uint16 map).
- {fmt}
{cls_line}

| class | synthesized instances |
|---|---|
{rows}

## Models
{model_lines}
{schema}

## Licence
{LICENCE["cityscapes" if space.name == "cityscapes" else "other"]}

## Config
```yaml
{to_yaml(cfg)}```
"""
    storage.write_bytes(storage.join(out, "README.md"), text.encode())
    return text

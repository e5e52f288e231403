"""The dataset card written into every output dir (README.md): what it is, how made, licence."""

from __future__ import annotations

import subprocess

import yaml

from instsynth import __version__, shards, storage
from instsynth.config import Config, to_yaml


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=__file__.rsplit("/", 2)[0], timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        sha = ""
    return f"{__version__}" + (f" ({sha})" if sha else "")


#: Hugging Face ``datasets`` features of the row schema (``dataset_info.features`` in the card):
#: PNG bytes decode as images - ``instance_ids`` is a 16-bit PNG, which PIL opens as mode I;16,
#: losslessly - and the boxes as fixed-length sequences.  The shards keep their plain Parquet schema.
HF_FEATURES = {"image": {"dtype": "image"}, "instance_ids": {"dtype": "image"},
               "bbox": {"list": "int32", "length": 4}, "crop_box": {"list": "int32", "length": 4},
               "square_box": {"list": "int32", "length": 4}}
ARROW_TO_HF = {"string": "string", "int32": "int32", "int64": "int64", "double": "float64", "binary": "binary"}

LICENCE = """Derived from the Cityscapes dataset (or a dataset in its layout). The Cityscapes terms of use
apply: non-commercial research and teaching only, cite Cordts et al. (CVPR 2016), and **data derived
from Cityscapes may not be redistributed** - do not upload it to a public Hugging Face repository or
share it outside your group; keep it private to the people who hold a Cityscapes licence. Generated
pixels come from the models listed below, each under its own licence (e.g. CreativeML Open RAIL++-M for
SDXL). The embedded sample of InstSynth is synthetic and carries no Cityscapes pixels."""


def hf_features() -> list[dict]:
    out = []
    for f in shards.ROW_SCHEMA:
        spec = HF_FEATURES.get(f.name) or {"dtype": ARROW_TO_HF[str(f.type)]}
        out.append({"name": f.name, **spec})
    return out


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


def front_matter(rows: int, generator: str, files: list[str]) -> str:
    """The card's YAML header: licence, task, tags, size, features and ``configs`` listing exactly the
    committed shards, so ``load_dataset(OUT)`` (and the Hub) read those and nothing else in OUT."""
    meta = {
        "license": "other",
        "license_name": "cityscapes-derived",
        "license_details": "Derived from Cityscapes: non-commercial research only; must not be redistributed.",
        "pretty_name": f"IS-Cityscapes ({generator})",
        "task_categories": ["image-segmentation"],
        "task_ids": ["instance-segmentation"],
        "tags": ["cityscapes", "synthetic", "diffusion", "inpainting", "instsynth", "urban-scenes"],
        "size_categories": [size_category(rows)],
        "dataset_info": {"features": hf_features()},
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": files}]}],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000) + "---\n"


def write_card(out: str, cfg: Config, summary: dict, ledger=None, generator: str | None = None,
               glob: bool = True) -> str:
    """Rewritten after every run and repair, from verified units only (``summary['damaged_units']``),
    and from their markers only: class counts and models travel in each marker's ``stats``, so no
    data file is read (markers older than that: ``Ledger.stats`` reads their files once).
    ``generator="original"``: the card of an ``instsynth originals`` dir (full frames, no synthesis)."""
    generator = generator or cfg.generator.name
    if ledger is None:
        ledger = shards.Ledger(out)
        ledger.scan()
    damaged = set(summary.get("damaged_units", []))
    good = [u for u in sorted(ledger.markers) if u not in damaged]
    tot = ledger.totals(good)
    return render_card(out, cfg, summary, generator, tot["classes"], tot["models"], data_files(ledger, good, glob))


def render_card(out: str, cfg: Config, summary: dict, generator: str, per_class: dict, models,
                files: list[str]) -> str:
    """The card text from counts (shared by output dirs and ``export --format parquet``); written to OUT."""
    rows = "\n".join(f"| {c or '(none: original frames)'} | {n} |" for c, n in sorted(per_class.items())) \
        or "| (none) | 0 |"
    model_lines = "\n".join(f"- generator `{g}`, model `{m or '-'}`, revision `{r or '-'}`"
                            for g, m, r in sorted(models)) or f"- generator `{generator}`"
    if generator == "original":
        what = (f"The original `{cfg.plan.split}` images of the source dataset as IS-Cityscapes rows, written by "
                f"InstSynth {code_version()}: full frames with their instanceIds maps (generator `original`, "
                "no synthesis), so 'original + synthetic' training reads one schema.")
    else:
        what = (f"Instance-segmentation training data synthesized by InstSynth {code_version()}: the top-"
                f"{cfg.plan.top_k}\ninstances of each source image were re-generated by `{generator}` from a "
                "category-driven prompt,\npasted back through their masks and cut into focused 2:1 crops "
                f"(lambda ~ N({cfg.compose.lam_mean}, {cfg.compose.lam_sd})).")
    text = front_matter(summary["committed_rows"], generator, files) + f"""# IS-Cityscapes shard set ({generator})

{what}

## Contents
- committed rows: {summary['committed_rows']} (planned {summary['planned']}, failed {summary['failed_items']},
  pending {summary['pending_items']})
- rows are in the `data/part-*.parquet` files listed in the header above (only committed units; see the
  InstSynth README for the schema). Open them with `datasets.load_dataset("<this dir>", split="train")`:
  `image` and `instance_ids` decode to PIL images (`instance_ids` is 16-bit: `np.array(...)` gives the
  uint16 instanceIds map, classId*1000+k).

| class | synthesized instances |
|---|---|
{rows}

## Models
{model_lines}

## Licence
{LICENCE}

## Config
```yaml
{to_yaml(cfg)}```
"""
    storage.write_bytes(storage.join(out, "README.md"), text.encode())
    return text

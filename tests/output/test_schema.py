"""The row schema in one place, and outputs of the first row format (Cityscapes-only: ``instance_ids``,
``city``) still read everywhere - status, stats, report, export, train - and never rewritten."""

import hashlib
import io
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.datasets import encode_index
from instsynth.datasets.cityscapes import instance_ids
from instsynth.io import storage
from instsynth.output.layout import LEDGER, marker_path, part_path, plan_path
from instsynth.output.ledger import committed_parts, committed_units
from instsynth.output.schema import FIELDS, ROW_SCHEMA, labels_of, markdown_table
from instsynth.plan.planner import CONFIG_KEY, ROOT_KEY
from instsynth.synth.driver import run_synth
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
DEBUG = os.path.join(ROOT, "configs", "debug.yaml")

#: the first row format, as InstSynth wrote it before datasets other than Cityscapes were read
V1 = pa.schema([("work_id", pa.string()), ("image_id", pa.string()), ("split", pa.string()), ("city", pa.string()),
                ("instance_id", pa.int32()), ("class_name", pa.string()), ("image", pa.binary()),
                ("instance_ids", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
                ("bbox", pa.list_(pa.int32(), 4)), ("crop_box", pa.list_(pa.int32(), 4)),
                ("square_box", pa.list_(pa.int32(), 4)), ("lam", pa.float64()), ("prompt", pa.string()),
                ("negative_prompt", pa.string()), ("generator", pa.string()), ("model_id", pa.string()),
                ("model_revision", pa.string()), ("seed", pa.int64()), ("gen_seed", pa.int64()),
                ("variant", pa.int32()), ("source_image", pa.string()), ("gen_stats", pa.string())])


def test_readme_schema_table_is_the_code():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert markdown_table() in readme, "README's row schema table differs from instsynth/output/schema.py (regenerate it)"
    assert ROW_SCHEMA.names == [n for n, _, _ in FIELDS]


def downgrade(out: str) -> None:
    """Rewrite a fresh output dir exactly as the first format wrote it (parts, markers, plan, config)."""
    for u, m in committed_units(out).items():
        if not m["rows"]:
            continue
        rows = []
        for r in pq.read_table(part_path(out, u)).to_pylist():
            ids = instance_ids(labels_of(r))
            rows.append({"work_id": r["work_id"], "image_id": r["image_id"], "split": r["split"], "city": r["group"],
                         "instance_id": r["instance_id"], "class_name": r["class_name"], "image": r["image"],
                         "instance_ids": encode_index(ids), **{k: r[k] for k in V1.names[8:]}})
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=V1), buf, compression="zstd")
        data = buf.getvalue()
        storage.write_bytes(part_path(out, u), data)
        m["v"] = 2
        m["data"] = {"file": m["data"]["file"], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "rows": len(rows)}
        storage.write_bytes(marker_path(out, u), json.dumps(m).encode())
    storage.remove_tree(storage.join(out, LEDGER))
    storage.remove(storage.join(out, "dataset.json"))
    plan = pq.read_table(plan_path(out))
    meta = {k: v for k, v in plan.schema.metadata.items() if k in (ROOT_KEY, CONFIG_KEY)}
    plan = plan.rename_columns(["city" if n == "group" else "instance_ids_path" if n == "label_path" else n
                                for n in plan.column_names]).drop_columns(["class_id"])
    plan = plan.set_column(plan.column_names.index("instance_id"), "instance_id",
                           plan.column("instance_id").cast(pa.int32()))
    pq.write_table(plan.replace_schema_metadata(meta), plan_path(out))
    cfg = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    cfg.pop("dataset")
    cfg["prompts"].pop("default_template")
    open(os.path.join(out, "config.yaml"), "w").write(yaml.safe_dump(cfg, sort_keys=False))


def test_first_format_outputs_read_everywhere(sample_root, tmp_path, capsys):
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    cfg = ["run.executor=local", "run.progress=false", "generator.name=recolor"]
    for d in (new, old):
        run_synth(sample_root, d, load_config(DEBUG, cfg), log=lambda *a: None)
    downgrade(old)
    before = {p: open(p, "rb").read() for p in committed_parts(old)}
    assert main(["status", old, "--verify"]) == 0
    assert main(["stats", old, "--out", str(tmp_path / "s_old")]) == 0
    assert main(["stats", new, "--out", str(tmp_path / "s_new")]) == 0
    capsys.readouterr()
    assert open(tmp_path / "s_old" / "class_counts.txt").read() == open(tmp_path / "s_new" / "class_counts.txt").read()
    for d in (old, new):
        assert main(["export", d, "--format", "cityscapes", "--out", str(tmp_path / f"cs_{os.path.basename(d)}")]) == 0
        assert main(["export", d, "--format", "coco", "--out", str(tmp_path / f"coco_{os.path.basename(d)}")]) == 0
        assert main(["report", d]) == 0
        assert main(["preview", d, "--compare", "--n", "2"]) == 0
    for root, _, files in os.walk(tmp_path / "cs_new"):
        for f in files:
            p = os.path.join(root, f)
            assert open(p, "rb").read() == open(p.replace("cs_new", "cs_old"), "rb").read(), p
    a = json.load(open(tmp_path / "coco_old" / "instances.json"))
    b = json.load(open(tmp_path / "coco_new" / "instances.json"))
    assert a["annotations"] == b["annotations"] and a["categories"] == b["categories"]
    js = [re.sub(r'"u":"[^"]*"', "", open(os.path.join(d, "report", "samples-d0.js")).read()) for d in (old, new)]
    assert js[0].count('"w":') == js[1].count('"w":') > 0
    # training reads both formats to the same targets
    from instsynth.train.data import build_catalog, load_samples

    spec = {"stream": {"start_step": 0, "batch_size": 4, "worker_batch": 4, "accum": 1, "rank": 0, "world": 1},
            "short_edge": (128, 128), "crop": (128, 64), "flip": True, "mapper": "crop"}
    got = [load_samples({"id": np.arange(4)}, build_catalog([d], seed=1), spec) for d in (old, new)]
    from instsynth.train.data import collate

    t_old, t_new = collate(got[0]), collate(got[1])
    assert (t_old[0] == t_new[0]).all()
    for x, y in zip(t_old[1], t_new[1]):
        assert (x["labels"] == y["labels"]).all() and (x["masks"] == y["masks"]).all()
    # never rewritten: a synth into it is refused in one line and writes nothing
    assert main(["synth", sample_root, "--out", old, "--config", DEBUG] + sum((["--set", s] for s in cfg), [])) == 2
    assert "first row format" in capsys.readouterr().err
    assert {p: open(p, "rb").read() for p in committed_parts(old)} == before
    # its card, when written again (e.g. by a repair), says which format it holds
    from instsynth.output.card import write_card
    from instsynth.plan.planner import read_plan
    from instsynth.synth.driver import summarize

    old_cfg = load_config(os.path.join(old, "config.yaml"))
    ids = read_plan(plan_path(old))[0].column("work_id").to_pylist()
    card = write_card(old, old_cfg, summarize(old, ids, None, old_cfg))
    assert "Row format 1" in card and "name: instance_ids" in card and "name: labels" not in card

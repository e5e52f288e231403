import numpy as np
import pyarrow.parquet as pq

from instsynth.cli import main
from instsynth.config import load_config
from instsynth.datasets import ImageRef, cityscapes_space
from instsynth.datasets.cityscapes import discover, regions_from_ids
from instsynth.io import storage
from instsynth.plan.planner import make_plan, plan_image, read_plan
from tests.conftest import make_ids


def test_plan_rows_deterministic_unique(sample_root, small_cfg):
    t1, f1, s1 = make_plan(sample_root, small_cfg)
    t2, _, _ = make_plan(sample_root, small_cfg)
    assert t1.equals(t2) and f1.num_rows == 0
    ids = t1.column("work_id").to_pylist()
    assert len(ids) == len(set(ids)) > 0
    assert s1["images_without_instances"] == 1
    assert sum(s1["per_class"].values()) == t1.num_rows
    rows = t1.to_pylist()
    assert all(r["image_path"].startswith("leftImg8bit/train/") for r in rows)
    for r in rows:
        assert r["prompt"].startswith(("A photo of a ", "A photo of an "))
        x0, y0, x1, y1 = r["crop_box"]
        assert x1 - x0 == y1 - y0


def test_prompts_follow_templates():
    cfg = load_config(None, ["plan.min_pixels=1", "plan.variants=3"])
    rec = ImageRef("a_000000_000019", "train", "a", "i.png", "m.png")
    ids = make_ids(50, 100, [(26000, (0, 0, 20, 20)), (24000, (30, 0, 40, 30)), (25000, (50, 0, 60, 30))])
    rows = plan_image(rec, regions_from_ids(ids), cfg, cityscapes_space())
    assert len(rows) == 9 and {r["variant"] for r in rows} == {0, 1, 2}
    for r in rows:
        if r["class_name"] == "car":
            assert r["prompt"].split()[-1] == "car" and r["prompt"].split()[-2] in cfg.prompts.vocab["colour"]
        if r["class_name"] == "person":
            assert r["prompt"] in ("A photo of a man", "A photo of a woman")
        if r["class_name"] == "rider":
            assert r["prompt"] in ("A photo of a male rider", "A photo of a female rider")


def test_prompts_read_naturally():
    from instsynth.plan.prompts import make_prompt

    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        p, w = make_prompt("car", {"car": "A photo of a {colour} car"}, {"colour": ["orange", "red", "ivory"]}, rng)
        seen.add(p)
    assert seen == {"A photo of an orange car", "A photo of a red car", "A photo of an ivory car"}
    p, _ = make_prompt("rider", {"rider": "a {x} rider on an {y} bike"}, {"x": ["uniformed"], "y": ["old"]}, rng)
    assert p == "a uniformed rider on an old bike"


def test_class_variants_multiplier():
    cfg = load_config(None, ["plan.min_pixels=1", "plan.class_variants={person: 4}"])
    rec = ImageRef("a_000000_000019", "train", "a", "i.png", "m.png")
    ids = make_ids(50, 100, [(26000, (0, 0, 20, 20)), (24000, (30, 0, 40, 30))])
    rows = plan_image(rec, regions_from_ids(ids), cfg, cityscapes_space())
    assert sum(r["class_name"] == "person" for r in rows) == 4
    assert sum(r["class_name"] == "car" for r in rows) == 1


def test_plan_cli_records_unreadable_maps(sample_root, tmp_path, capsys):
    import shutil

    root = str(tmp_path / "root")
    shutil.copytree(sample_root, root)
    rec = next(discover(root, "train"))
    storage.write_bytes(storage.join(root, rec.labels), b"garbage")
    out = str(tmp_path / "plan.parquet")
    assert main(["plan", root, "--out", out, "--config", "configs/debug.yaml", "--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "work items" in text and "failures: 1" in text and "car" in text
    fails = pq.read_table(str(tmp_path / "plan.failures.parquet")).to_pylist()
    assert fails[0]["image_id"] == rec.image_id and "cannot decode" in fails[0]["reason"]
    table, r = read_plan(out)
    assert r == storage.absolute(root) and table.num_rows > 0
    assert max(table.group_by("image_id").aggregate([("work_id", "count")]).column("work_id_count").to_pylist()) <= 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["plan", str(tmp_path), "--out", str(tmp_path / "p.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a dataset" in err
    assert main(["plan", str(tmp_path), "--out", "x.parquet", "--set", "plan.bogus=1"]) == 2
    assert "unknown key 'plan.bogus'" in capsys.readouterr().err


def test_default_template_names_any_class():
    """A class without a template of its own gets the default one, with its noun from the label space."""
    from instsynth.plan.prompts import make_prompt

    p, words = make_prompt("traffic_light", {}, {"colour": ["orange"]}, np.random.default_rng(0),
                           noun="traffic light", default="A photo of a {colour} {name}")
    assert p == "A photo of an orange traffic light" and words == {"colour": "orange", "name": "traffic light"}


def test_unknown_class_fails_listing_valid(sample_root, capsys, tmp_path):
    assert main(["plan", sample_root, "--out", str(tmp_path / "p.parquet"), "--set", "plan.classes=[car, caravan]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plan.classes: ['caravan'] are not selectable classes of cityscapes" in err
    assert "'bicycle'" in err and not (tmp_path / "p.parquet").exists()

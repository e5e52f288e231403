"""The benchmark scripts run (CPU smoke configs); their numbers are printed, never asserted."""

import os
import subprocess
import sys

import pytest

from tests.conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_bench_generate_cpu_smoke():
    out = _run("scripts/bench_generate.py", "--generator", "blended-sdxl", "--probe", "2,4", "--batch", "2",
               "--e2e", "--e2e-items", "4", "--e2e-unit", "2", "--e2e-executor", "local")
    assert "TFLOPs/step" in out and "ours vs naive" in out
    assert "e2e: 4 rows (0 failed)" in out  # the saved pipeline ran through the real job


def test_bench_generate_full_flops_on_meta():
    out = _run("scripts/bench_generate.py", "--generator", "sdxl-inpaint", "--scale", "full", "--flops-only")
    assert "2.57 B params" in out and "13.52 TFLOPs/step" in out


def test_bench_cpu_stages_smoke():
    out = _run("scripts/bench_cpu_stages.py", "--images", "3", "--size", "512x256", "--repeat", "1")
    assert "ratio total/baseline" in out


def test_bench_train_ablation_refuses_an_unknown_revert_in_one_line(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "scripts/bench_train.py", "--arms", "fastinst:imagenet", "--revert",
                        "ppm,ppx", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and r.stderr.strip() == "--revert: unknown 'ppx'; valid: all, proposal, location, " \
        "points, ppm, guided"
    assert not out.exists()


def test_bench_train_means_group_runs_by_setting_not_by_arm():
    """The protocol's mean held-out AP50: runs differing only by seed (and where they wrote) are one setting,
    averaged; another LR is another setting of the same arm."""
    bench = load_script("bench_train")

    def report(name, seed, lr, ap50, extra=()):
        return {"arm": "fastinst:imagenet", "name": f"{name}-fastinst-imagenet-seed{seed}",
                "config": [f"train.seed={seed}", f"train.name={name}-x", f"train.lr={lr}", "train.iterations=1000",
                           f"train.checkpoint_every={250 + 250 * seed}", *extra],
                "curve": [*([{"step": 500, "val": {"AP50": 0.9}}] if not seed else []),
                          {"step": 1000, "val": {"AP50": ap50}}]}
    # seed 1 saved at another interval, set its LR twice and scored no midpoint: still the same setting, and
    # seed 0's midpoint (one seed) is no mean over the two; the seed is read from the config
    means = bench.mean_heldout([report("seed1-fi", 1, 5e-4, 0.1, ["train.lr=0.0005"]),
                                report("fi-lr5e-4", 0, 5e-4, 0.2), report("fi-lr2e-4", 0, 2e-4, 0.3)])
    assert means == {"fi-lr5e-4: fastinst:imagenet": {1000: pytest.approx(0.15), "seeds": 2},
                     "fi-lr2e-4: fastinst:imagenet": {500: 0.9, 1000: 0.3, "seeds": 1}}


def test_bench_train_summary_table_is_one_row_per_setting_at_its_last_checkpoint():
    """The table the README copies: seeds of one setting averaged at the final (annealed) step, the LR an
    override set (the last train.lr), the restored deviations named."""
    bench = load_script("bench_train")

    def report(name, seed, ap50, revert=()):
        point = {"train": {"AP50": 0.5}, "val": {"AP50": ap50, "AP": ap50 / 2, "per_class_AP50": {"person": ap50}}}
        return {"arm": "fastinst:imagenet", "name": f"{name}-fastinst-imagenet-seed{seed}", "seed": seed,
                "recipe": "official", "revert": list(revert),
                "config": [f"train.seed={seed}", "train.lr=0.0005", "train.lr=1e-4", "train.iterations=1000",
                           f"train.model.params={{revert: {list(revert)}}}"],
                "curve": [{**point, "step": 500, "val": {**point["val"], "AP50": 0.9}}, {**point, "step": 1000}]}
    rows = bench.summary_table([report("fi", 1, 0.1), report("fi", 0, 0.2),
                                report("fix-ppm", 0, 0.3, ["proposal", "points"])]).splitlines()
    assert len(rows) == 4
    assert rows[2] == ("| fi | fastinst:imagenet | official, LR 1e-4 | - | 1000 | 0, 1 | 0.500 | **0.150** (0.075) "
                       "| 0.200 / 0.100 | 0.150 / - / - |")
    assert "| proposal, points | 1000 | 0 |" in rows[3] and "**0.300**" in rows[3]


def test_bench_train_plot_reads_curve_files_and_json_results_and_refuses_anything_else(tmp_path):
    """docs/ keeps each protocol run as its --json result; --plot must redraw the table from those alone."""
    import json

    bench = load_script("bench_train")
    run = {"arm": "fastinst:imagenet", "name": "fi-fastinst-imagenet-seed0", "curve": [{"step": 1000}]}
    (tmp_path / "curve.json").write_text(json.dumps(run))
    (tmp_path / "result.json").write_text(json.dumps({"arms": [{**run, "seed": 1}], "mean_heldout_AP50": {}}))
    (tmp_path / "other.json").write_text(json.dumps({"rows": 3}))
    assert [r.get("seed") for r in bench.plot_reports([str(tmp_path / "curve.json"),
                                                       str(tmp_path / "result.json")])] == [None, 1]
    with pytest.raises(SystemExit, match="other.json: not a curve"):
        bench.plot_reports([str(tmp_path / "other.json")])
    point = {"step": 1000, "val": {"AP50": 0.1}}
    runs = [{**run, "seed": k, "curve": [point], "config": [f"train.seed={k}"], "machine": "vm"} for k in (0, 1)]
    bench.plot_settings(runs, str(tmp_path / "settings.png"), bench.PROTOCOL_TARGETS)  # two seeds, one bar
    assert (tmp_path / "settings.png").stat().st_size > 0


def test_bench_train_schedule_curves_join_runs_that_differ_only_by_length_and_seed(tmp_path):
    """The protocol runs each schedule length as its own annealed run: a learning curve joins their last
    checkpoints; a setting run at one length only (the ablation) is no curve, and with no curve at all the
    figure falls back to every run's own."""
    bench = load_script("bench_train")

    def run(name, steps, seed, val, extra=()):
        return {"arm": "fastinst:imagenet", "name": f"{name}-fastinst-imagenet-seed{seed}", "recipe": "official",
                "machine": "vm", "s_per_iter": 1.0, "config": [f"train.iterations={steps}", f"train.seed={seed}", *extra],
                "curve": [{"step": steps // 2, "train": {"AP50": 0.9}, "val": {"AP50": 0.9}},  # not annealed
                          {"step": steps, "train": {"AP50": val + 0.1}, "val": {"AP50": val}}]}

    runs = [run("fi", 1000, 0, 0.1), run("fi", 1000, 1, 0.2), run("fi-2000", 2000, 0, 0.3),
            run("fi-2000", 2000, 1, 0.5), run("fi-mapper", 1000, 0, 0.4, ["train.mapper=fastinst"])]
    curves = bench.schedule_curves(runs)
    assert list(curves) == ["fastinst:imagenet, official recipe, crops (fi)"]
    assert curves["fastinst:imagenet, official recipe, crops (fi)"] == {
        1000: {"train": [pytest.approx(0.2), pytest.approx(0.3)], "val": [0.1, 0.2]},
        2000: {"train": [pytest.approx(0.4), pytest.approx(0.6)], "val": [0.3, 0.5]}}
    bench.plot_schedules(runs, str(tmp_path / "curves.png"), bench.PROTOCOL_TARGETS)
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert bench.schedule_curves(runs[-1:]) == {}
    bench.plot_schedules(runs[-1:], str(tmp_path / "one.png"))  # no curve: each run's own
    assert (tmp_path / "one.png").stat().st_size > 0


def test_bench_train_resumed_run_scores_only_curve_points_and_times_its_own_part(tmp_path):
    """A protocol run killed midway resumes from its last --checkpoint-every save: only the --every checkpoints
    (and the last) are curve points, and its speed counts only the iterations this launch trained."""
    bench = load_script("bench_train")
    assert [s for s in range(250, 2001, 250) if bench.scored(s, 1000, 2000)] == [1000, 2000]
    assert bench.scored(1800, 1000, 1800)  # the end is always a point
    starts = tmp_path / "starts.jsonl"
    assert bench.launch_start(str(starts), 0) == 0  # a first launch (no file yet)
    starts.write_text('{"start_step": 0}\n{"start_step": 750}\n')  # killed at 750's save, then launched again
    assert bench.launch_start(str(starts), 1) == 750 and bench.launch_start(str(starts), 2) == 0


def test_bench_train_mapper_cost_times_both_mappers_on_the_same_model(tmp_path):
    """``--mapper-cost`` on a small sample and the tiny model: both kinds of step timed, and the authors'
    mapper's batches (whole images at the training scale, or crops resized back to it) hold more pixels than
    a 384x192 crop's."""
    import argparse
    import json

    from instsynth.config import load_config
    from instsynth.datasets.sample import write_sample
    from instsynth.synth.originals import write_originals

    bench = load_script("bench_train")
    out = tmp_path / "out"
    write_sample(str(out / "cityscapes"), images=6, size=(512, 256), seed=0)  # written: protocol_sample keeps it
    write_originals(str(out / "cityscapes"), str(out / "original"), load_config(None), log=lambda *a: None)
    res = bench.mapper_cost(argparse.Namespace(out=str(out), iters=1), tiny=True)
    assert res["crop"]["median_s_per_step"] > 0 and res["fastinst"]["median_s_per_step"] > 0
    assert res["crop"]["mean_batch_pixels"] == 384 * 192 and res["pixel_ratio"] > 1
    json.dumps(res)


def test_diag_fastinst_rules_counts_every_gt_once_and_gives_each_a_proposal_cell(sample_root, tmp_path):
    """docs/fastinst.md's rules figures (docs/diag_fastinst_rules.json) on the test sample: every GT of a crop owns at
    least one proposal cell (the authors' pooled rule), the per-class rows add up to "all", and the shares
    are shares."""
    from instsynth.config import load_config
    from instsynth.synth.originals import write_originals

    diag = load_script("diag_fastinst")
    orig = str(tmp_path / "original")
    write_originals(sample_root, orig, load_config(None), log=lambda *a: None)
    res = diag.rules(orig, crops=8)
    everything = res.pop("all")
    assert everything["gts"] > 0 and everything["gts"] == sum(r["gts"] for r in res.values())
    assert everything["proposal_cells"] >= everything["gts"]
    for row in (everything, *res.values()):
        for key in ("cells_inside_authors", "cells_inside_centre", "gts_unmatchable_authors", "gts_unmatchable_centre"):
            assert 0 <= row[key] <= 1, (key, row)


def test_diag_fastinst_recall_tells_a_missed_mask_from_a_wrong_class(sample_root, tmp_path, monkeypatch):
    """``recall`` on an oracle that predicts every GT mask: all found; with every label shifted by one, all still
    found but none as their class; no false prediction ever outranks a hit."""
    import json

    from instsynth.train import evaluate
    from instsynth.train.data import targets

    diag = load_script("diag_fastinst")
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "model.json").write_text(json.dumps({"recipe": {"eval_short_edge": None}}))
    shift = {"by": 0, "copies": 1}
    truth = {}

    def oracle(model, image, short_edge=None):
        masks, labels = truth["targets"]
        return [{"mask": m, "label": (int(c) + shift["by"]) % 8, "score": 1.0 - 0.01 * k - 0.001 * j}
                for k, (m, c) in enumerate(zip(masks, labels)) for j in range(shift["copies"])]

    real_ground_truth = diag.ground_truth

    def reading(*args, **kwargs):  # the image's GT, as the seam read it, for the oracle
        for img, index, things in real_ground_truth(*args, **kwargs):
            truth["targets"] = targets(index, things)
            yield img, index, things

    monkeypatch.setattr(evaluate, "load_checkpoint", lambda path: (object.__new__(_Eval), 7))
    monkeypatch.setattr(evaluate, "predict_image", oracle)
    monkeypatch.setattr(diag, "ground_truth", reading)
    right = next(iter(diag.recall([str(ckpt)], sample_root).values()))
    assert right and all(r["found"] == 1 and r["found_as_class"] == 1 and r["false_above_hit"] == 0
                         and r["false_per_image"] == 0 and not any(r["above_median_hit"].values())
                         for r in right.values() if r["gts"])
    shift["copies"] = 2  # each mask twice, the copy just below its original: AP50's duplicates, nothing else
    twice = next(iter(diag.recall([str(ckpt)], sample_root).values()))
    kinds = [r["above_median_hit"] for r in twice.values() if r["gts"]]
    assert sum(k["duplicate"] for k in kinds) > 0 and not any(k[n] for k in kinds for n in ("loose", "other_class", "background"))
    assert all(r["found_as_class"] == 1 and r["false_per_image"] == 0 for r in twice.values() if r["gts"])
    shift["copies"] = 1
    shift["by"] = 1
    wrong = next(iter(diag.recall([str(ckpt)], sample_root).values()))
    assert all(r["found"] == 1 and r["found_as_class"] == 0 for r in wrong.values() if r["gts"])


class _Eval:
    def eval(self):
        return self


def test_diag_fastinst_false_kinds_match_greedily_by_score():
    """Five predictions of one class against two GTs of it (0, 1) and one of another (2): the best-scored
    takes GT 0, the next covering only GT 0 is a duplicate, then a loose fit on GT 1, a mask on the other
    class's GT, one on nothing; a lower-scored one that finds GT 1 free is a hit, not a false positive."""
    import numpy as np

    diag = load_script("diag_fastinst")
    iou = np.array([[0.9, 0, 0], [0.7, 0, 0], [0, 0.3, 0], [0, 0, 0.8], [0, 0, 0.05], [0, 0.6, 0]])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    kinds = diag.false_kinds(np.arange(6), np.array([0, 1]), np.array([2]), iou, score)
    assert kinds == [("duplicate", 0.8, True), ("loose", 0.7, True), ("other_class", 0.6, True), ("background", 0.5, True)]
    unreachable_1 = diag.false_kinds(np.arange(6), np.array([0, 1]), np.array([2]), iou, score, np.array([True, False]))
    assert [r for _, _, r in unreachable_1] == [True, False, True, True]  # the loose fit is on GT 1


def test_diag_fastinst_reachable_says_which_instances_a_stride_8_mask_can_cover():
    """A 64x64 square survives a stride-8 mask head; a 3x3 speck pools to under half a cell and cannot;
    at test scale 2x the native size the same speck becomes 6x6 and still cannot (under one 8x8 cell)."""
    import numpy as np

    diag = load_script("diag_fastinst")
    masks = np.zeros((2, 128, 256), bool)
    masks[0, 32:96, 64:128] = True
    masks[1, 10:13, 10:13] = True
    assert diag.reachable(masks, None).tolist() == [True, False]
    assert diag.reachable(masks, 256).tolist() == [True, False]


def test_train_protocol_runs_name_their_fixes_and_refuse_an_unknown_run(tmp_path):
    """``DRY_RUN=1`` lists every run once with its arguments and writes nothing: fix-X restores every fixed
    deviation but X, fi-without-X only X, ppm-plus-X all but the PPM and X; each revert list and override is one
    bench_train.py and the config accept. An unknown run is refused in one line, before anything is written."""
    from instsynth.config import load_config
    from instsynth.train.models.fastinst import REVERTS

    bench = load_script("bench_train")
    out = tmp_path / "proto"
    r = subprocess.run(["bash", "scripts/train_protocol.sh", str(out)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "DRY_RUN": "1"}, timeout=60)
    assert r.returncode == 0 and not out.exists(), r.stderr
    runs = {}
    for line in r.stdout.splitlines():
        name, args = line.split(" ", 2)[1], line.split(": ", 1)[1].split()
        assert name not in runs
        runs[name] = args
    assert {"m2f-1000", "fi-mapper", "seed1-fi-2000", "seed1-m2f-2000", "ppm-plus-guided"} <= set(runs)

    def reverted(args):
        return set(bench.reverts(args[args.index("--revert") + 1])) if "--revert" in args else set()

    for name, args in runs.items():
        load_config(None, [a for k, a in zip(args, args[1:]) if k == "--set"])  # every override is a config key
        fix = name.split("-")[-1]
        if name.startswith("fix-") and fix in REVERTS:
            assert reverted(args) == set(REVERTS) - {fix}, name
        elif name.startswith("fi-without-"):
            assert reverted(args) == {fix}, name
        elif name.startswith("ppm-plus-"):
            assert reverted(args) == set(REVERTS) - {"ppm", fix}, name
    assert reverted(runs["old"]) == set(REVERTS) and not reverted(runs["fi-lr1e-4"])
    bad = subprocess.run(["bash", "scripts/train_protocol.sh", str(out), "fix-ppm", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown run 'nope'" in bad.stderr and not out.exists()

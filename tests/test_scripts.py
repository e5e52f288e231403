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


def test_diag_fastinst_rules_counts_every_gt_once_and_gives_each_a_proposal_cell(sample_root, tmp_path):
    """The README's rules figures (docs/diag_fastinst_rules.json) on the test sample: every GT of a crop owns at
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

    from instsynth.datasets.cityscapes import read_ids
    from instsynth.train import evaluate
    from instsynth.train.data import targets_from_ids

    diag = load_script("diag_fastinst")
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "model.json").write_text(json.dumps({"recipe": {"eval_short_edge": None}}))
    shift = {"by": 0}
    truth = {}

    def oracle(model, image, short_edge=None):
        masks, labels = targets_from_ids(truth["ids"])
        return [{"mask": m, "label": (int(c) + shift["by"]) % 8, "score": 1.0 - 0.01 * k}
                for k, (m, c) in enumerate(zip(masks, labels))]

    real_read_ids = read_ids

    def reading(path):
        truth["ids"] = real_read_ids(path)
        return truth["ids"]

    monkeypatch.setattr(evaluate, "load_checkpoint", lambda path: (object.__new__(_Eval), 7))
    monkeypatch.setattr(evaluate, "predict_image", oracle)
    monkeypatch.setattr("instsynth.datasets.cityscapes.read_ids", reading)
    right = next(iter(diag.recall([str(ckpt)], sample_root).values()))
    assert right and all(r["found"] == 1 and r["found_as_class"] == 1 and r["false_above_hit"] == 0
                         and r["false_per_image"] == 0 for r in right.values() if r["gts"])
    shift["by"] = 1
    wrong = next(iter(diag.recall([str(ckpt)], sample_root).values()))
    assert all(r["found"] == 1 and r["found_as_class"] == 0 for r in wrong.values() if r["gts"])


class _Eval:
    def eval(self):
        return self

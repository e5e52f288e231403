import pytest

from instsynth.config import ConfigError, load_config, result_differences, to_dict


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("plan:\n  top_k: 5\n")
    cfg = load_config(str(p), ["plan.min_pixels=10", "compose.lam_mean=2.5", "run.address=null"],
                      {"plan.variants": 2})
    assert cfg.plan.top_k == 5 and cfg.plan.min_pixels == 10 and cfg.compose.lam_mean == 2.5
    assert cfg.plan.variants == 2 and cfg.run.address is None


def test_unknown_key_lists_valid_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("plan:\n  topk: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "unknown key 'plan.topk'" in str(e.value) and "top_k" in str(e.value) and str(p) in str(e.value)
    with pytest.raises(ConfigError, match="valid keys at the top level: sample, dataset, plan"):
        load_config(None, ["nope.x=1"])


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="plan.top_k: expected an integer"):
        load_config(None, ["plan.top_k=many"])
    with pytest.raises(ConfigError, match="plan.classes"):
        load_config(None, ["plan.classes=caravan"])
    with pytest.raises(ConfigError, match="dataset.format must be auto, cityscapes, coco or mapillary, got 'voc'"):
        load_config(None, ["dataset.format=voc"])
    with pytest.raises(ConfigError, match="train.mapper must be 'crop' or 'fastinst', got 'detectron2'"):
        load_config(None, ["train.mapper=detectron2"])
    with pytest.raises(ConfigError, match="train.max_size: expected a positive long-side cap in pixels or null, got 0"):
        load_config(None, ["train.max_size=0"])
    assert load_config(None, ["train.max_size=853"]).train.max_size == 853
    with pytest.raises(ConfigError, match="train.eval_max_size: expected a positive long-side cap in pixels or null, got -1"):
        load_config(None, ["train.eval_max_size=-1"])


def test_run_budgets_must_be_positive():
    with pytest.raises(ConfigError, match="run.inflight_mb must be >= 1, got 0"):
        load_config(None, ["run.inflight_mb=0"])
    with pytest.raises(ConfigError, match="run.num_cpus must be > 0, got 0"):
        load_config(None, ["run.num_cpus=0"])


def test_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(Exception, match="nope.yaml: cannot read"):
        load_config(str(tmp_path / "nope.yaml"))


def test_result_differences_ignore_execution_keys():
    a = to_dict(load_config())
    b = to_dict(load_config(None, ["run.rows_per_unit=99", "generator.max_actors=4", "plan.top_k=4"]))
    assert result_differences(a, b) == ["plan.top_k"]


def test_dotted_override_merges_into_mappings(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("generator:\n  name: sdxl-inpaint\n  params: {model: a, steps: 2, extra: {dilate: 1}}\n")
    cfg = load_config(str(p), ["generator.params.model=b", "generator.params.extra.blend_start=0.5"])
    assert cfg.generator.params == {"model": "b", "steps": 2, "extra": {"dilate": 1, "blend_start": 0.5}}


def test_a_retired_key_in_an_old_config_file_is_ignored(tmp_path):
    """Output dirs written before ``run.pause_after_units`` was retired carry it in config.yaml: they still
    load (export reads them) and compare equal on resume."""
    from instsynth.config import RETIRED

    old = tmp_path / "config.yaml"
    old.write_text("run:\n  pause_after_units: null\n  rows_per_unit: 2\n")
    assert "run.pause_after_units" in RETIRED and load_config(str(old)).run.rows_per_unit == 2
    assert result_differences({"run": {"pause_after_units": None}}, to_dict(load_config(None))) == []

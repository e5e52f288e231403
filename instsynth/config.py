"""Typed configuration: one dataclass tree, loaded from YAML, overridden with dotted ``key=value``.

Why one tree: the CLI flags, the YAML files in ``configs/`` and the ``ray_jobs/`` entrypoints all
drive the same object, so a run is fully described by its resolved config (written into every
output dir and compared on resume).  Unknown keys fail early and list the valid ones.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from instsynth.errors import ConfigError  # noqa: F401 - raised here, importable from here
from instsynth.io import storage


@dataclass
class SampleConfig:
    """The embedded synthetic sample in Cityscapes layout (`instsynth sample`)."""

    images: int = 12
    size: str = "2048x1024"
    seed: int = 0
    val_fraction: float = 0.25


@dataclass
class DatasetConfig:
    """Which reader a SOURCE goes through (``instsynth.datasets``; ``auto``: ``datasets.detect`` decides
    from the path).  ``image_root``: where a COCO file's images lie (``--image-root``; its default is the
    COCO format's own rule, ``datasets.coco.default_image_root``)."""

    format: str = "auto"
    image_root: str | None = None


@dataclass
class PlanConfig:
    """Phase 1 selection and the work plan (paper Eq. 1)."""

    split: str = "train"
    top_k: int = 3
    min_pixels: int = 1024
    margin: float = 0.1
    variants: int = 1
    seed: int = 0
    #: classes Phase 1 may select; None: every selectable class of the dataset's label space (Cityscapes:
    #: its eight evaluated thing classes; COCO: every category).  Checked against the label space at plan time.
    classes: list[str] | None = None
    class_variants: dict[str, int] = field(default_factory=dict)
    workers: int = 4


@dataclass
class ComposeConfig:
    """Phase 3: paste-back and focused 2:1 cropping (paper Eq. 2-3)."""

    lam_mean: float = 3.0
    lam_sd: float = 1.0
    lam_min: float = 1.0
    sliver_pixels: int = 64
    sliver_redraws: int = 10
    feather: int = 0
    resize: str | None = None


def _default_templates() -> dict[str, str]:
    t = {c: "A photo of a {colour} " + c for c in ["car", "truck", "bus", "train", "motorcycle", "bicycle"]}
    t["person"] = "A photo of a {gender}"
    t["rider"] = "A photo of a {sex} rider"
    return t


def _default_vocab() -> dict[str, list[str]]:
    return {
        "colour": ["red", "blue", "green", "yellow", "white", "black", "silver", "orange", "purple", "brown"],
        "gender": ["man", "woman"],
        "sex": ["male", "female"],
    }


@dataclass
class PromptConfig:
    """Category-driven prompts: a template per class; each ``{slot}`` draws from ``vocab[slot]``."""

    templates: dict[str, str] = field(default_factory=_default_templates)
    #: the template of every class without its own; ``{name}`` is the class's noun from the label space
    default_template: str = "A photo of a {colour} {name}"
    vocab: dict[str, list[str]] = field(default_factory=_default_vocab)
    negative: str = ""


@dataclass
class GeneratorConfig:
    """Which generator runs Phase 2 and how its actor pool is sized."""

    name: str = "identity"
    #: images per model call; ``auto``: the largest batch that fits the GPU's free memory (probed at
    #: actor start-up, ``generators.resolve_batch_size``), 4 off-GPU
    batch_size: int | str = 4
    num_gpus: float = 0.0
    num_cpus: float = 0.5
    min_actors: int = 1
    max_actors: int = 1
    resources: dict[str, float] = field(default_factory=dict)
    cost_s_per_item: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """How a run executes.  Keys listed in EXECUTION_ONLY may change between resumed runs."""

    executor: str = "ray"
    address: str | None = None
    rows_per_unit: int = 8
    num_cpus: float = 1.0
    progress: bool = True
    log_level: str = "WARNING"
    max_failure_fraction: float = 0.5
    limit: int | None = None
    data_root: str | None = None
    op_reservation: bool = False
    inflight_mb: int = 1024


@dataclass
class QualityConfig:
    """Per-sample quality numbers, the reject-and-regenerate filter, and the set metrics' weights."""

    per_sample: bool = True
    change_threshold: int = 12
    min_changed_inside: float | None = None
    min_inside_share: float | None = None
    max_psnr_inside: float | None = None
    min_clip: float | None = None
    max_tries: int = 3
    clip_model: str | None = None
    inception_weights: str | None = None
    feature_size: int = 299


@dataclass
class ModelConfig:
    """Which segmenter to train and how to build it (see instsynth.train.models)."""

    name: str = "fastinst"
    tiny: bool = False
    pretrained: str | None = None
    backbone_weights: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Ray Train over IS-Cityscapes output dirs.

    Defaults are the paper's setting (section IV.A: FastInst, AdamW 1e-4, batch 4, 90k iterations,
    360x720 crops) with FastInst/Mask2Former's optimisation recipe: linear warmup then poly(0.9),
    backbone LR x0.1, no weight decay on norms, biases and embeddings, full-model gradient clipping,
    bf16 autocast on GPUs; detectron2's Cityscapes scales (short edge 512-2048 in training, 1024 at test).
    """

    dirs: list[str] = field(default_factory=list)
    synthetic_ratio: float | None = None
    short_edge: list[int] = field(default_factory=lambda: [512, 2048])
    crop: str = "720x360"
    flip: bool = True
    #: how a training sample is cut: ``crop`` (detectron2's Cityscapes recipe: every sample a ``crop``
    #: window of the image at a random ``short_edge``) or ``fastinst`` (FastInst's authors' mapper: half
    #: the samples the whole image at a random ``short_edge``, half a ``crop`` window resized back to one;
    #: sizes vary, so a micro-batch is padded to its largest sample, rounded up to a multiple of 32)
    mapper: str = "crop"
    #: the long-side cap of the training-scale resize (detectron2's ``ResizeShortestEdge(max_size)``: a
    #: sample whose long side would pass it is scaled to it instead; FastInst's COCO config: 853,
    #: Mask2Former's Cityscapes config: 4096, which 2:1 frames at short edge 2048 never pass); None: no cap
    max_size: int | None = None
    #: the test scale: short side in pixels (None: native), and its long-side cap (the authors'
    #: ``MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, 853 on COCO; None: no cap, which 2:1 frames never need)
    eval_short_edge: int | None = 1024
    eval_max_size: int | None = None
    batch_size: int = 4
    worker_batch: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_mult: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    poly_power: float = 0.9
    #: ``poly`` (Mask2Former's) or ``step`` (FastInst's published config: x``lr_gamma`` at ``lr_steps``,
    #: fractions of ``iterations``; with ``warmup_iters: 10``, ``warmup_factor: 1.0``, ``grad_clip: 0``)
    schedule: str = "poly"
    lr_steps: list[float] = field(default_factory=lambda: [0.89, 0.96])
    lr_gamma: float = 0.1
    grad_clip: float = 0.01
    amp: str = "auto"
    sync_bn: bool = True
    iterations: int = 90000
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    checkpoint_every: int = 1000
    eval_every: int = 5000
    log_every: int = 10
    #: how samples reach a worker: ``threads`` (decoded beside it, ``loader_threads`` at a time) or
    #: ``ray_data`` (a Ray Data pipeline whose CPU tasks, ``ingest_cpus`` each, may run on other nodes)
    ingest: str = "threads"
    loader_threads: int = 2
    ingest_cpus: float = 1.0
    #: where the workers go: PACK (fill a node first), SPREAD or STRICT_SPREAD (one per node)
    placement: str = "PACK"
    #: a Cityscapes root (its ``eval_split``) or a COCO instances JSON (scored with pycocotools)
    eval_root: str | None = None
    #: a COCO JSON's images (default ``<root>/<name>/`` for ``<root>/annotations/instances_<name>.json``)
    eval_image_root: str | None = None
    eval_split: str = "val"
    eval_max_images: int | None = None
    name: str = "instsynth-train"
    storage_path: str = "runs"
    keep_checkpoints: int = 3
    #: worker or node losses survived per run (Ray Train's FailureConfig): the worker group restarts from
    #: the last reported checkpoint; -1: unlimited, 0: a lost worker ends the run
    max_failures: int = 3
    seed: int = 0
    #: print the evaluators' own dumps (pycocotools, cityscapesscripts); --verbose
    verbose: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class ExperimentConfig:
    """The paired experiment: baseline (originals) vs augmented (originals + generators)."""

    originals: list[str] = field(default_factory=list)
    synthetic: list[str] = field(default_factory=list)
    out: str = "experiment"
    #: runs per arm; run k trains with train.seed + k (init, sample order, crops): mean +- std and a
    #: paired 95% interval of augmented - baseline over the seeds
    seeds: int = 1


@dataclass
class Config:
    sample: SampleConfig = field(default_factory=SampleConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    run: RunConfig = field(default_factory=RunConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)


#: keys that are gone; config files written with them still load (the key is ignored)
RETIRED = {"run.pause_after_units"}

# Keys that only say *how* a run executes, not *what* it produces: resuming with other values is fine.
EXECUTION_ONLY = {
    "run.address",
    "run.limit",
    "generator.batch_size",  # outputs are batch-invariant (per-item seeds; tested on the tiny pipelines)
    "run.rows_per_unit",
    "run.num_cpus",
    "run.progress",
    "run.log_level",
    "run.pause_after_units",  # retired (a test-only hold); old config.yaml files still carry it
    "run.max_failure_fraction",
    "run.executor",
    "run.data_root",
    "dataset.image_root",  # where the same data lies (like run.data_root)
    "run.op_reservation",
    "run.inflight_mb",
    "generator.min_actors",
    "generator.max_actors",
    "generator.num_cpus",
    "generator.num_gpus",
    "generator.resources",
    "generator.cost_s_per_item",
    "plan.workers",
    "sample",
    "train",
    "experiment",
    "quality.inception_weights",
    "quality.feature_size",
}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Coerce/validate ``value`` against a (simple) type annotation; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_check_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {_check_value(k, k_tp, key): _check_value(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _merge(obj: Any, data: dict, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or '<top>'}' must be a mapping, got {data!r}")
    for k, v in data.items():
        key = f"{prefix}{k}"
        if key in RETIRED and k not in names:  # in config.yaml files written before it went: no meaning now
            continue
        if k not in names:
            where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
            raise ConfigError(f"{source}: unknown key '{key}'; valid keys {where}: {', '.join(names)}")
        tp = hints[k]
        if _is_dataclass_type(tp):
            _merge(getattr(obj, k), v, key + ".", source)
        elif typing.get_origin(tp) is dict and isinstance(v, dict) and isinstance(getattr(obj, k), dict):
            # mappings merge key by key, so `--set generator.params.model=x` keeps the other params
            setattr(obj, k, _check_value(_deep_update(getattr(obj, k), v), tp, key))
        else:
            setattr(obj, k, _check_value(v, tp, key))


def _deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1"`` -> ``("a.b", 1)``; the value is parsed as YAML (so 1, 1.5, true, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML file <- ``values`` (dotted keys, e.g. from CLI flags) <- ``overrides`` (``--set``)."""
    cfg = Config()
    if path:
        try:
            data = yaml.safe_load(storage.read_bytes(path).decode()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
        _merge(cfg, data, "", path)
        if not storage.is_uri(path):
            _anchor_paths(cfg, data, os.path.dirname(os.path.abspath(path)))
    for key, value in (values or {}).items():
        _merge(cfg, _nest(key, value), "", "flag")
    for text in overrides or []:
        key, value = parse_override(text)
        _merge(cfg, _nest(key, value), "", f"--set {text}")
    validate(cfg)
    return cfg


#: path keys that a config *file* may give relative to itself (on the command line: to the current dir)
FILE_RELATIVE_PATHS = ("dataset.image_root", "train.dirs", "train.eval_root", "train.eval_image_root", "train.storage_path", "train.model.backbone_weights",
                       "experiment.originals", "experiment.synthetic", "experiment.out")


def _anchor_paths(cfg: Config, data: dict, base: str) -> None:
    """Make the relative paths a config file sets relative to that file, so a shipped config runs
    from any working directory."""
    for key in FILE_RELATIVE_PATHS:
        *parents, leaf = key.split(".")
        node, raw = cfg, data
        for p in parents:
            node, raw = getattr(node, p), (raw or {}).get(p) if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or leaf not in raw:
            continue

        def anchor(v):
            if v is None or v == "bundled" or "://" in v or os.path.isabs(os.path.expanduser(v)):
                return v  # "bundled": backbone weights shipped in a package, not a path
            return os.path.normpath(os.path.join(base, v))
        value = getattr(node, leaf)
        setattr(node, leaf, [anchor(v) for v in value] if isinstance(value, list) else anchor(value))
    # a model given as ./ or ../ is a local directory beside the config (a bare name is a hub id)
    params = (data.get("generator") or {}).get("params") if isinstance(data.get("generator"), dict) else None
    for key in ("model", "vae"):
        v = (params or {}).get(key)
        if isinstance(v, str) and v.startswith(("./", "../")):
            cfg.generator.params[key] = os.path.normpath(os.path.join(base, v))


def validate(cfg: Config) -> None:
    """Cross-field checks with short messages naming the key."""
    if cfg.dataset.format not in ("auto", "cityscapes", "coco", "mapillary"):
        raise ConfigError(f"dataset.format must be auto, cityscapes, coco or mapillary, got {cfg.dataset.format!r}")
    if cfg.plan.top_k < 1:
        raise ConfigError(f"plan.top_k must be >= 1, got {cfg.plan.top_k}")
    if cfg.plan.variants < 1:
        raise ConfigError(f"plan.variants must be >= 1, got {cfg.plan.variants}")
    if cfg.run.rows_per_unit < 1:
        raise ConfigError(f"run.rows_per_unit must be >= 1, got {cfg.run.rows_per_unit}")
    if cfg.run.inflight_mb < 1:
        raise ConfigError(f"run.inflight_mb must be >= 1, got {cfg.run.inflight_mb}")
    if cfg.run.num_cpus <= 0:
        raise ConfigError(f"run.num_cpus must be > 0, got {cfg.run.num_cpus}")
    if cfg.run.executor not in ("ray", "local"):
        raise ConfigError(f"run.executor must be 'ray' or 'local', got {cfg.run.executor!r}")
    bs = cfg.generator.batch_size
    if bs != "auto" and (isinstance(bs, str) or bs < 1):
        raise ConfigError(f"generator.batch_size must be >= 1 or 'auto', got {bs!r}")
    if cfg.compose.resize is not None:
        parse_size(cfg.compose.resize, "compose.resize")
    parse_size(cfg.sample.size, "sample.size")
    t = cfg.train
    if t.amp not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or fp32, got {t.amp!r}")
    if len(t.short_edge) != 2 or not 0 < t.short_edge[0] <= t.short_edge[1]:
        raise ConfigError(f"train.short_edge: expected [min, max] with 0 < min <= max, got {t.short_edge}")
    parse_size(t.crop, "train.crop")
    if t.max_size is not None and t.max_size <= 0:
        raise ConfigError(f"train.max_size: expected a positive long-side cap in pixels or null, got {t.max_size}")
    if t.eval_max_size is not None and t.eval_max_size <= 0:
        raise ConfigError("train.eval_max_size: expected a positive long-side cap in pixels or null, "
                          f"got {t.eval_max_size}")
    if t.mapper not in ("crop", "fastinst"):
        raise ConfigError(f"train.mapper must be 'crop' or 'fastinst', got {t.mapper!r}")
    if t.synthetic_ratio is not None and t.synthetic_ratio < 0:
        raise ConfigError(f"train.synthetic_ratio must be >= 0, got {t.synthetic_ratio}")
    if t.schedule not in ("poly", "step"):
        raise ConfigError(f"train.schedule must be 'poly' or 'step', got {t.schedule!r}")
    if any(not 0 < f < 1 for f in t.lr_steps):
        raise ConfigError(f"train.lr_steps: fractions of train.iterations in (0, 1), got {t.lr_steps}")
    if t.ingest not in ("threads", "ray_data"):
        raise ConfigError(f"train.ingest must be 'threads' or 'ray_data', got {t.ingest!r}")
    if t.placement not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise ConfigError(f"train.placement must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got {t.placement!r}")
    if t.ingest_cpus <= 0:
        raise ConfigError(f"train.ingest_cpus must be > 0, got {t.ingest_cpus}")
    if t.max_failures < -1:
        raise ConfigError(f"train.max_failures must be -1 (unlimited) or >= 0, got {t.max_failures}")
    for key in ("batch_size", "num_workers", "iterations"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    grad_accum(t)


def grad_accum(t: TrainConfig) -> tuple[int, int]:
    """(per-worker micro-batch, accumulation steps) making up ``batch_size`` images per step."""
    wb = t.worker_batch or max(1, t.batch_size // t.num_workers)
    if t.batch_size % (wb * t.num_workers):
        raise ConfigError(f"train.batch_size: {t.batch_size} is not a multiple of num_workers x worker_batch "
                          f"({t.num_workers} x {wb})")
    return wb, t.batch_size // (wb * t.num_workers)


def parse_size(text: str, key: str) -> tuple[int, int]:
    """``"2048x1024"`` -> ``(2048, 1024)`` (width, height)."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"{key}: expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 1 or h < 1:
        raise ConfigError(f"{key}: sizes must be positive, got {text!r}")
    return w, h


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and key in _SECTIONS:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_SECTIONS = {f.name for f in dataclasses.fields(Config)}


def result_differences(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two resolved configs, ignoring execution-only keys.  A key one
    side lacks (a config written before the key existed) counts as its default."""
    fa, fb = flatten(a), flatten(b)
    defaults = flatten(to_dict(Config()))
    diffs = []
    for k in sorted(set(fa) | set(fb)):
        if k in EXECUTION_ONLY or k.split(".")[0] in EXECUTION_ONLY:
            continue
        if fa.get(k, defaults.get(k)) != fb.get(k, defaults.get(k)):
            diffs.append(k)
    return diffs

"""Weights on a cluster: fetch (online) or verify (offline) every model a config names into the
node-local Hugging Face cache (``HF_HOME``), preferring fp16 variants; ``HF_TOKEN`` from the env.

Run it on each node (or bake the cache into the image) before the job, so actors start fast and fail
fast with a clear message when weights are missing.
"""

from __future__ import annotations

import os

from instsynth.config import Config
from instsynth.generators import GeneratorError, generator_class
from instsynth.generators.diffusion import check_model, is_local_path

KEEP = ("*.json", "*.txt", "*.model", "tokenizer*", "*merges*", "*vocab*")


def models_of(cfg: Config) -> list[tuple[str, str | None]]:
    """(model id or path, revision) for the generator (and its VAE) and the training model."""
    out = []
    cls = generator_class(cfg.generator.name)
    model = cfg.generator.params.get("model") or getattr(cls, "default_model", "")
    if model:
        out.append((model, cfg.generator.params.get("revision")))
    if cfg.generator.params.get("vae"):
        out.append((cfg.generator.params["vae"], None))
    if cfg.train.model.pretrained:
        out.append((cfg.train.model.pretrained, None))
    return out


def _patterns(repo: str, revision: str | None, token: str | None) -> list[str] | None:
    """Prefer fp16 weight files when the repo has them (half the download and disk)."""
    from huggingface_hub import HfApi

    files = HfApi(token=token).list_repo_files(repo, revision=revision)
    if any(".fp16." in f for f in files):
        return [*KEEP, "*.fp16.safetensors"]
    return [*KEEP, "*.safetensors"] if any(f.endswith(".safetensors") for f in files) else None


def prefetch(cfg: Config, offline: bool | None = None, log=print) -> list[dict]:
    from huggingface_hub import snapshot_download

    offline = offline if offline is not None else os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    token = os.environ.get("HF_TOKEN")
    report = []
    for model, revision in models_of(cfg):
        if is_local_path(model):
            check_model(model)
            report.append({"model": model, "where": os.path.abspath(os.path.expanduser(model)), "status": "local"})
            continue
        try:
            if offline:
                path = snapshot_download(model, revision=revision, local_files_only=True)
            else:
                path = snapshot_download(model, revision=revision, token=token,
                                         allow_patterns=_patterns(model, revision, token))
        except Exception as e:  # noqa: BLE001 - hub errors are many; one line names the model
            how = "not in the local cache (HF_HOME)" if offline else "cannot be downloaded"
            raise GeneratorError(f"weights {model!r} (revision {revision or 'default'}) {how}: "
                                 f"{str(e).splitlines()[0][:200]}") from None
        report.append({"model": model, "where": path, "status": "verified" if offline else "downloaded"})
    for r in report:
        log(f"{r['status']:<10} {r['model']} -> {r['where']}")
    return report

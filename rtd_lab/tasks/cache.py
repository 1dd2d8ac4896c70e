"""``task=cache``: build (or verify) the offline teacher cache the same ``train`` run would use."""

from __future__ import annotations

from omegaconf import DictConfig

from rtd_lab.tasks.train import attach_teacher_cache, prepare


def run_cache(cfg: DictConfig) -> dict:
    p = prepare(cfg)
    if not p.module.needs_teacher:
        raise ValueError(f"method {p.method_name} trains without a teacher: there is nothing to cache")
    cache = attach_teacher_cache(cfg, p, force_build=True)
    info = {"path": str(cache.path), **cache.manifest["stats"], "spec": cache.manifest["spec"]}
    print(
        f"teacher cache {cache.path}: {len(cache)} examples, {info['supervised_tokens']} supervised tokens, "
        f"{info['bytes'] / 1e6:.1f} MB ({info['bytes_per_token']:.1f} bytes per token)"
    )
    return info

"""The model server container of a Model, from the backend registry (:mod:`flexinfer.backends`).

Image choice, in order: ``spec.image`` (the Model's own choice), an operator override for the backend and
vendor (``--backend-image vllm/amd=rocm/vllm@sha256:...``, or ``vllm=...`` for every vendor), the
registry's pinned image for the vendor. Overrides must be pinned (a version tag or a digest):
:func:`parse_image_overrides` rejects ``latest`` and floating tags.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flexinfer import backends
from flexinfer.backends.recipes import MODELS_DIR, pvc_of_source, source_ref
from flexinfer.errors import ParseError
from flexinfer.model import Model

__all__ = ["MODELS_DIR", "Container", "ImageOverrides", "container_for", "parse_image_overrides", "pvc_of_source",
           "source_ref"]

# (backend, vendor or "*") -> image
ImageOverrides = Mapping[tuple[str, str], str]


@dataclass(frozen=True, slots=True)
class Container:
    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    port: int
    health_path: str
    ready_command: list[str] | None = None
    shm_mib: int = 0


def parse_image_overrides(values: Iterable[str]) -> dict[tuple[str, str], str]:
    """``BACKEND[/VENDOR]=IMAGE`` items -> overrides. ParseError naming the bad item (unknown backend or
    vendor, unpinned image)."""
    out: dict[tuple[str, str], str] = {}
    for item in values:
        key, sep, image = item.partition("=")
        if not sep or not key or not image:
            raise ParseError("--backend-image", item, "BACKEND[/VENDOR]=IMAGE, e.g. vllm/amd=rocm/vllm@sha256:...")
        name, _, vendor = key.partition("/")
        backend = backends.canonical(name)
        vendor = vendor.strip().lower() or "*"
        if vendor != "*" and vendor not in backends.IMAGE_VENDORS:
            raise ParseError("--backend-image vendor", vendor, " or ".join(backends.IMAGE_VENDORS))
        problem = backends.image_pin_problem(image)
        if problem:
            raise ParseError("--backend-image", item, f"a pinned image ({problem})")
        out[(backend, vendor)] = image.strip()
    return out


def image_for(model: Model, vendor: str, overrides: ImageOverrides | None = None) -> str:
    if model.spec.image:
        return model.spec.image
    b = model.backend
    if overrides:
        chosen = overrides.get((b, vendor)) or overrides.get((b, "*"))
        if chosen:
            return chosen
    return backends.REGISTRY[b].image_for(vendor)


def container_for(model: Model, vendor: str, overrides: ImageOverrides | None = None,
                  local: str | None = None) -> Container:
    """Image/command/args/env/port/health for `model` on `vendor` (nvidia|amd|cpu). `local`: the directory
    of the prefetched model in the cache volume (see ``controller.cache``), if any."""
    b = backends.REGISTRY[model.backend]
    command, args, env = b.recipe(model, vendor, local)
    env = dict(env)
    if model.spec.config:
        env["FLEXINFER_CONFIG"] = json.dumps(model.spec.config, sort_keys=True, separators=(",", ":"))
    ready = b.ready_command(model) if b.ready_command else None
    return Container(image_for(model, vendor, overrides), command, args, env, b.port, b.health_path, ready,
                     b.shm_mib)

"""Backend x architecture compatibility: the registry's rules, one function that reads them.

The rules are data in the backend registry (:mod:`flexinfer.backends`, one entry per backend); this
module turns a rule and a GPU architecture into a verdict. Sources are in docs/backend-compatibility.md
(vLLM docs and CMake arch lists, llama.cpp CMake, Ollama docs/gpu.mdx, MLC-LLM install docs, PyTorch
wheel arch lists for diffusers/ComfyUI).

Verdicts:
* SUPPORTED: officially listed.
* DEGRADED: runs only through a custom build, an override, Vulkan or an older wheel. The extender
  accepts the node but scores it lower; preflight reports WARN. A caveat that hinges on the NVIDIA driver
  (the registry's `degraded_min_driver`) is decided by :func:`with_driver` from the node's driver label:
  met -> SUPPORTED, older -> UNSUPPORTED, not labelled -> DEGRADED.
* UNSUPPORTED: will not run. The extender puts the node in FailedAndUnresolvableNodes (preemption
  cannot fix an architecture) and preflight reports BLOCK.

Adding a GPU vendor: a rule type in :mod:`flexinfer.backends.rules`, a checker in :data:`VENDOR_CHECKS`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from flexinfer import backends, keys
from flexinfer.arch import AMD, INTEL, NONE, NVIDIA, ArchInfo
from flexinfer.backends.rules import AmdRule, BackendRule, NvidiaRule


class Verdict(enum.StrEnum):
    SUPPORTED = "supported"
    DEGRADED = "degraded"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True, slots=True)
class Compat:
    verdict: Verdict
    reason: str  # human text; empty when SUPPORTED without caveats

    @property
    def ok(self) -> bool:
        return self.verdict is not Verdict.UNSUPPORTED


# Views of the registry kept for callers: canonical names, alias -> name, name -> rule.
BACKENDS: tuple[str, ...] = backends.NAMES
ALIASES: Mapping[str, str] = backends.ALIASES
RULES: Mapping[str, BackendRule] = MappingProxyType({b.name: b.compat for b in backends.REGISTRY.values()})

canonical_backend = backends.canonical  # resolves aliases; ParseError naming the choices


def check(backend: str, arch: ArchInfo, *, jit_policy: str = "") -> Compat:
    """Can `backend` run on a GPU of architecture `arch`? Pure; every "no" has a reason."""
    b = canonical_backend(backend)
    rule = RULES[b]
    if arch.vendor == NONE:
        if rule.cpu_ok:
            return Compat(Verdict.SUPPORTED, "")
        return Compat(Verdict.UNSUPPORTED, f"{b} needs a GPU")
    checker = VENDOR_CHECKS.get(arch.vendor)
    if checker is None:
        return Compat(Verdict.UNSUPPORTED, f"unknown GPU vendor {arch.vendor}")
    return checker(b, rule, arch, jit_policy)


def _check_nvidia(b: str, backend_rule: BackendRule, arch: ArchInfo, jit_policy: str) -> Compat:
    rule: NvidiaRule | None = backend_rule.nvidia
    where = f"{arch.family} {arch.arch}"
    if rule is None:
        return Compat(Verdict.UNSUPPORTED, f"{b} does not run on NVIDIA GPUs")
    cc = arch.cc or (0, 0)
    if arch.family == "maxwell" and rule.maxwell_readonly_ok:
        if jit_policy.upper() == "READONLY":
            return Compat(Verdict.DEGRADED, f"{b} on {where} runs only a precompiled library (FP32)")
        return Compat(Verdict.UNSUPPORTED,
                      f"{b} on {where} needs a precompiled library (set spec.config.jitPolicy: READONLY)")
    if arch.family in rule.explicit_no:
        text = rule.explicit_no[arch.family].format(backend=b, arch=arch.arch, cc=arch.compute)
        return Compat(Verdict.UNSUPPORTED, text)
    if not arch.known:
        return Compat(Verdict.DEGRADED, f"{b} support for {arch.arch} (family {arch.family}) is unknown")
    if cc < rule.min_cc:
        need = f"{rule.min_cc[0]}.{rule.min_cc[1]}"
        return Compat(Verdict.UNSUPPORTED, f"{b} needs compute capability >= {need}; {where} is {arch.compute}")
    if cc < rule.supported_cc:
        return Compat(Verdict.DEGRADED, f"{b} on {where}: {rule.degraded_reason}")
    return Compat(Verdict.SUPPORTED, "")


def _check_amd(b: str, backend_rule: BackendRule, arch: ArchInfo, jit_policy: str) -> Compat:
    rule: AmdRule | None = backend_rule.amd
    if rule is None:
        return Compat(Verdict.UNSUPPORTED, f"{b} does not run on AMD GPUs")
    g = arch.arch
    if g in rule.explicit_no:
        return Compat(Verdict.UNSUPPORTED, rule.explicit_no[g])
    if g in rule.supported or (rule.any_gfx and arch.known):
        return Compat(Verdict.SUPPORTED, "")
    if g in rule.degraded:
        return Compat(Verdict.DEGRADED, f"{b} on {g}: {rule.degraded_reason}")
    if rule.any_gfx:
        return Compat(Verdict.DEGRADED, f"{b} support for {g} is unknown (not in the architecture table)")
    listed = ", ".join(sorted(rule.supported))
    return Compat(Verdict.UNSUPPORTED, f"{b} does not support {g} (supported: {listed})")


def _check_intel(b: str, backend_rule: BackendRule, arch: ArchInfo, jit_policy: str) -> Compat:
    rule = backend_rule.intel
    if rule is not None:
        if arch.arch in rule.supported:
            return Compat(Verdict.SUPPORTED, "")
        return Compat(Verdict.DEGRADED, f"{b} on Intel {arch.arch}: {rule.degraded_reason}")
    if backend_rule.intel_degraded:
        return Compat(Verdict.DEGRADED, backend_rule.intel_reason)
    return Compat(Verdict.UNSUPPORTED, backend_rule.intel_reason)


# GPU vendor -> checker(backend, rule, arch, jit_policy).
VENDOR_CHECKS: Mapping[str, Callable[[str, BackendRule, ArchInfo, str], Compat]] = MappingProxyType({
    NVIDIA: _check_nvidia,
    AMD: _check_amd,
    INTEL: _check_intel,
})

__all__ = ["ALIASES", "BACKENDS", "RULES", "VENDOR_CHECKS", "AmdRule", "BackendRule", "Compat", "NvidiaRule",
           "Verdict", "canonical_backend", "check"]


def driver_major_of(labels: Mapping[str, str]) -> int | None:
    """The node's NVIDIA driver major version from its `gpu.driver-version.major` label (None: absent or junk)."""
    raw = labels.get(keys.LABEL_DRIVER_MAJOR, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else None


def min_driver(backend: str, vendor: str) -> int:
    """The NVIDIA driver a DEGRADED verdict of `backend` hinges on (0: none)."""
    rule = RULES[canonical_backend(backend)].nvidia if vendor == NVIDIA else None
    return rule.degraded_min_driver if rule is not None else 0


def with_driver(backend: str, vendor: str, verdict: Compat, driver_major: int | None) -> Compat:
    """`verdict` decided by the node's NVIDIA driver when it is a DEGRADED caveat that hinges on it (the one
    place of this rule: the extender, the controller's placement and preflight all use it): a driver at or above
    the registry's `degraded_min_driver` -> SUPPORTED, an older one -> UNSUPPORTED (the reason names the version
    needed), unknown (None) -> the DEGRADED verdict unchanged. Any other verdict is returned as it is."""
    if verdict.verdict is not Verdict.DEGRADED:
        return verdict
    need = min_driver(backend, vendor)
    if not need or driver_major is None:
        return verdict
    if driver_major >= need:
        return Compat(Verdict.SUPPORTED, "")
    return Compat(Verdict.UNSUPPORTED, f"{verdict.reason}; the node's driver is older")

"""Every label, annotation and resource name FlexInfer reads or writes: the contract.

Node labels are slow-changing facts written by the agent; node annotations are fast-changing
state; pod annotations are set by the controller (or by hand) and read by the extender. The
pod keys match the Go FlexInfer so its users' pods keep working.
"""

from __future__ import annotations

PREFIX = "flexinfer.ai/"

# --- Node labels (agent) --------------------------------------------------------------------
LABEL_VENDOR = PREFIX + "gpu.vendor"  # nvidia | amd | intel | none | mixed
LABEL_ARCH = PREFIX + "gpu.arch"  # sm_52, gfx1100, or "mixed"
LABEL_FAMILY = PREFIX + "gpu.family"  # maxwell, rdna3, ... or "mixed"
LABEL_COMPUTE = PREFIX + "gpu.compute"  # NVIDIA compute capability "5.2" (omitted on AMD/mixed)
LABEL_VRAM = PREFIX + "gpu.vram"  # smallest card's total, e.g. "24Gi"
LABEL_COUNT = PREFIX + "gpu.count"  # number of GPUs the agent sees
LABEL_PRODUCT = PREFIX + "gpu.product"  # label-safe product name (<= 63 chars) or "mixed"
LABEL_UNIFIED_MEMORY = PREFIX + "gpu.unified-memory"  # "true" on APUs sharing system RAM
# Integers for node-affinity Gt/Lt (the GFD labels' meaning, in our namespace; docs/label-interop.md)
LABEL_MEMORY_MIB = PREFIX + "gpu.memory-mib"  # smallest schedulable GPU's (or MIG instance's) total MiB
LABEL_COMPUTE_MAJOR = PREFIX + "gpu.compute.major"  # NVIDIA compute capability major ("5")
LABEL_COMPUTE_MINOR = PREFIX + "gpu.compute.minor"  # NVIDIA compute capability minor ("2")
LABEL_DRIVER_VERSION = PREFIX + "gpu.driver-version"  # "580.95.05" (single-vendor nodes only)
LABEL_DRIVER_MAJOR = PREFIX + "gpu.driver-version.major"  # "580"
LABEL_CUDA_VERSION = PREFIX + "gpu.cuda-version"  # CUDA version the NVIDIA driver supports, "13.0"
LABEL_CUDA_MAJOR = PREFIX + "gpu.cuda-version.major"
LABEL_CUDA_MINOR = PREFIX + "gpu.cuda-version.minor"
LABEL_ROCM_VERSION = PREFIX + "gpu.rocm-version"  # ROCm release of the AMD stack, "7.0.2"
LABEL_ROCM_MAJOR = PREFIX + "gpu.rocm-version.major"
LABEL_ROCM_MINOR = PREFIX + "gpu.rocm-version.minor"
LABEL_SHARING = PREFIX + "gpu.sharing-strategy"  # none | time-slicing | mig
LABEL_REPLICAS = PREFIX + "gpu.replicas"  # device-plugin replicas per GPU (time-slicing), smallest
# Per-architecture counts on nodes with mixed GPUs: flexinfer.ai/gpu.arch.<arch> = "<count>"
LABEL_ARCH_COUNT_PREFIX = PREFIX + "gpu.arch."

NODE_LABEL_KEYS = (
    LABEL_VENDOR, LABEL_ARCH, LABEL_FAMILY, LABEL_COMPUTE, LABEL_VRAM, LABEL_COUNT, LABEL_PRODUCT,
    LABEL_UNIFIED_MEMORY, LABEL_MEMORY_MIB, LABEL_COMPUTE_MAJOR, LABEL_COMPUTE_MINOR, LABEL_DRIVER_VERSION,
    LABEL_DRIVER_MAJOR, LABEL_CUDA_VERSION, LABEL_CUDA_MAJOR, LABEL_CUDA_MINOR, LABEL_ROCM_VERSION,
    LABEL_ROCM_MAJOR, LABEL_ROCM_MINOR, LABEL_SHARING, LABEL_REPLICAS,
)

MIXED = "mixed"

# --- Node annotations (agent) ---------------------------------------------------------------
ANN_FREE_MEMORY = PREFIX + "gpu-free-memory"  # free MiB over healthy GPUs (Go FlexInfer compatible)
ANN_GPU_STATE = PREFIX + "gpu-state"  # compact per-GPU JSON, see flexinfer.state
ANN_OBSERVED_AT = PREFIX + "gpu-observed-at"  # RFC 3339 UTC time of the sample
ANN_AGENT_STATUS = PREFIX + "agent-status"  # "ok" or a one-line reason (library missing, ...)

NODE_ANNOTATION_KEYS = (ANN_FREE_MEMORY, ANN_GPU_STATE, ANN_OBSERVED_AT, ANN_AGENT_STATUS)

# --- Pod contract (controller writes, extender reads) ---------------------------------------
POD_MODEL = PREFIX + "model"
POD_BACKEND = PREFIX + "backend"
POD_VRAM_ESTIMATE_MB = PREFIX + "gpu.vram-estimate-mb"  # MiB needed on each GPU
POD_VENDOR = PREFIX + "gpu.vendor"  # optional; read case-insensitively
POD_JIT_POLICY = PREFIX + "jit-policy"  # READONLY = precompiled library (mlc-llm on Maxwell)
POD_PREFERRED_ARCHS = PREFIX + "preferred-archs"  # comma list: archs with a compiled cache / last run
POD_GROUP = PREFIX + "gpu.shared"  # shared GPU group, informational

# --- Model / controller -------------------------------------------------------------------
MODEL_ACTIVATE = PREFIX + "activate"  # annotation on a Model: request activation (any value = time)
LABEL_MODEL = PREFIX + "model"  # label on Deployments/Services/Pods the controller owns
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
SYSTEM_NAMESPACE = "flexinfer-system"  # where the manifests install the components (Leases, Services)
MANAGED_BY = "flexinfer-controller"
# spec.serviceLabels projected for routing: label service.flexinfer.ai/<label>="true" on the Service,
# Deployment and pods (a valid serviceLabel is always a valid label name, so every one fits).
SERVICE_LABEL_PREFIX = "service.flexinfer.ai/"
# spec.litellm projected onto the Service for LiteLLM discovery: litellm.flexinfer.ai/{enabled,model-name,
# aliases,api-base}
LITELLM_PREFIX = "litellm.flexinfer.ai/"

# --- Extended resources ---------------------------------------------------------------------
RESOURCE_NVIDIA = "nvidia.com/gpu"
RESOURCE_AMD = "amd.com/gpu"
RESOURCE_INTEL_I915 = "gpu.intel.com/i915"  # Intel device plugin, GPUs on the i915 driver
RESOURCE_INTEL_XE = "gpu.intel.com/xe"  # Intel device plugin, GPUs on the xe driver
GPU_RESOURCES = {RESOURCE_NVIDIA: "nvidia", RESOURCE_AMD: "amd", RESOURCE_INTEL_I915: "intel",
                 RESOURCE_INTEL_XE: "intel"}

# --- Model API ------------------------------------------------------------------------------
MODEL_GROUP = "ai.flexinfer"
MODEL_VERSION = "v1alpha2"
MODEL_API_VERSION = f"{MODEL_GROUP}/{MODEL_VERSION}"
MODEL_KIND = "Model"
MODEL_PLURAL = "models"

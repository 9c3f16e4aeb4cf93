"""GPU readers behind one interface (`GpuReader`): NVML, amdsmi, KFD sysfs, and fleet fakes."""

from .base import Backoff, GpuReader, GpuSample, MultiReader, NullReader, XidEvent

__all__ = ["Backoff", "GpuReader", "GpuSample", "MultiReader", "NullReader", "XidEvent"]

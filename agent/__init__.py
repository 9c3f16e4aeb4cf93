"""flexinfer-agent: the per-node DaemonSet that reads GPUs and publishes their state.

Modules:
  readers/base.py   GpuReader protocol (open/sample/close/status), GpuSample (every measurement,
                    None = unsupported), Backoff, NullReader, MultiReader
  readers/nvml.py   NvmlReader(pynvml module): v2->v1 memory, TemperatureV->legacy, NotSupported
                    bookkeeping, Xid event thread (nvmlEventSetWait_v2), re-init with backoff
  readers/amd.py    AmdSmiReader(amdsmi module), import_amdsmi() (guarded: KeyError without ROCm)
  readers/kfd.py    KFD sysfs parsing + KfdReader (static AMD facts without amdsmi)
  readers/fake.py   FakeNvml / FakeAmdSmi built from a fleet node; fleet_reader(node) runs the REAL
                    readers on them (faults: noise, xid, ecc, lost, not-supported, throttle,
                    library-missing, driver-mismatch)
  sampler.py        samples -> flexinfer.state.NodeGpuState (free = total - used - reserved)
  publish.py        should_publish() pure hysteresis policy, desired_metadata(), Publisher
                    (flexinfer.kube.patch_node_metadata), DryRunPublisher
  metrics.py        AgentMetrics (own registry per agent), served by flexinfer.ops_http (/metrics /healthz /readyz)
  grpc_server.py    NodeAgent GetState/WatchState + grpc health
  agent.py          Agent(node, reader, publisher=None): step() / start() / stop(); StateHub
  main.py           the `flexinfer-agent` CLI

Programmatic use (the demo runs one per fleet node, no ports):

    from flexinfer.agent import Agent, fleet_reader
    agent = Agent(node.name, fleet_reader(node), Publisher(api, node.name))  # or publisher=None
    result = agent.step(now)          # -> StepResult(state, samples, publish)
"""

from typing import Any

from .agent import Agent, StepResult
from .publish import DryRunPublisher, Publisher, should_publish

__all__ = ["Agent", "DryRunPublisher", "Publisher", "StepResult", "fleet_reader", "should_publish"]


def __getattr__(name: str) -> Any:
    # fleet_reader pulls in the fake readers and fleet parsing (flexinfer.fleet, yaml): the DaemonSet on
    # real GPUs never needs them, so they are imported on first use (demo, --fake-gpus, tests).
    if name == "fleet_reader":
        from .readers.fake import fleet_reader

        return fleet_reader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

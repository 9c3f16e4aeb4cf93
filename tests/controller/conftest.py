"""Controller test helpers: the homelab's Nodes as the agents publish them, so the controller's fit checks
(the extender's policy over its node cache) see real GPUs."""

from __future__ import annotations

from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.nodes import fleet_node_objects


def publish_nodes(fake, now: float, **used_mib: int) -> list[dict]:
    """Put the homelab fleet's Node objects into the fake API server as observed at `now`. `used_mib`: override
    the memory in use on a node's first GPU (keyword = node name with '-' as '_')."""
    fleet = load_fleet(default_fleet_path())
    for name, used in used_mib.items():
        node = next(n for n in fleet.nodes if n.name == name.replace("_", "-"))
        node.gpus[0].used_mi_b = used
    objs = fleet_node_objects(fleet, now)
    for obj in objs:
        fake.put_object({"apiVersion": "v1", "kind": "Node", **obj})
    return objs

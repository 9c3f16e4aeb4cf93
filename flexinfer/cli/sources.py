"""Where the CLI reads nodes from: a fleet file, a NodeList dump, or a cluster."""

from __future__ import annotations

from typing import Any

import click

from flexinfer.errors import ParseError
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.nodes import fleet_node_objects, load_node_objects, view_of
from flexinfer.state import NodeView


def node_objects(fleet: str | None, nodes_from: str | None, cluster: bool, kube_server: str | None,
                 kubeconfig: str | None, now: float) -> list[dict[str, Any]]:
    """The Nodes to judge: a NodeList/fleet file, the cluster's, or the embedded fleet. A source that cannot be
    read (a bad file, an unusable kubeconfig, an API server that does not answer or refuses) is a clear error
    (exit 1), never a traceback."""
    from flexinfer.kube.errors import KubeError

    try:
        if nodes_from:
            return load_node_objects(nodes_from, now)
        if cluster or kube_server or kubeconfig:
            from flexinfer import kube

            api = kube.api_client(server=kube_server, kubeconfig=kubeconfig)
            return kube.list_objects(api, "nodes")
        return fleet_node_objects(load_fleet(fleet or default_fleet_path()), now)
    except ParseError as e:
        raise click.ClickException(str(e)) from None
    except KubeError as e:
        raise click.ClickException(f"cannot read Nodes from the cluster: {e}") from None


def node_views(*args: Any, **kwargs: Any) -> list[NodeView]:
    return [view_of(o) for o in node_objects(*args, **kwargs)]


def source_options(f: Any) -> Any:
    f = click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Read Nodes from this cluster.")(f)
    f = click.option("--kube-server", metavar="URL", help="Read Nodes from this API server URL.")(f)
    f = click.option("--cluster", is_flag=True, help="Read Nodes from the current cluster (in-cluster/kubeconfig).")(f)
    f = click.option("--nodes-from", type=click.Path(exists=True, dir_okay=False),
                     help="A NodeList dump (kubectl get nodes -o json) or a fleet file.")(f)
    f = click.option("--fleet", type=click.Path(exists=True, dir_okay=False),
                     help="Fleet file (default: the embedded homelab fleet).")(f)
    return f

"""The API client and raw JSON requests over the official ``kubernetes`` client.

Everything talks to the API server through ``ApiClient.param_serialize`` + ``call_api`` (so auth, TLS and
proxies from the kubeconfig / in-cluster config apply) and decodes responses with msgspec into plain JSON
dicts (camelCase, exactly as the API sends them). The typed models are never used: they are slow and lossy
for custom resources.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import kubernetes.client
import kubernetes.config
import msgspec
import urllib3

from flexinfer import buildinfo

from .errors import KubeError

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TIMEOUT_S: tuple[float, float] = (5.0, 30.0)  # (connect, read)

_decoder = msgspec.json.Decoder()


def component_name() -> str:
    """The running console script (`flexinfer-agent`, ...) or `flexinfer` when embedded (tests, demo)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return prog if prog.startswith("flexinfer") and prog.replace("-", "").isalnum() else "flexinfer"


def api_client(server: str | None = None, kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """Explicit server URL (tests, demo) > in-cluster service account > kubeconfig (file or default).

    Requests carry `User-Agent: <component>/<version>` (e.g. `flexinfer-agent/0.2.0`), so API server audit logs
    and `apiserver_request_total` tell our components apart."""
    cfg = kubernetes.client.Configuration()
    if server:
        cfg.host = server.rstrip("/")
    elif kubeconfig is None and _in_cluster():
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except Exception as e:
            raise KubeError(f"cannot load the in-cluster service account config: {e}") from e
    else:
        try:
            kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        except Exception as e:  # the loader raises several unrelated types
            raise KubeError(f"cannot load kubeconfig {kubeconfig or '(default)'}: {e}") from e
    # Watches and the controller's workers share one pool; keep enough connections around.
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, 32)
    # No silent urllib3 retries (its default Retry(3) re-sends a timed-out GET three more times: a hung API
    # server would block a caller for 4x the read timeout). Retrying is decided in one place, with backoff,
    # by the callers' tenacity policies (`retry=`), and every attempt is logged.
    cfg.retries = False
    api = kubernetes.client.ApiClient(cfg)
    api.user_agent = buildinfo.user_agent(component_name())
    return api


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )


def open_response(
    api: kubernetes.client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str | None = None,
    timeout_s: float | tuple[float, float] | None = DEFAULT_TIMEOUT_S,
    accept: str | None = None,
) -> Any:
    """Send one request; returns the raw urllib3 response (not read; streams use it). KubeError(status=0)
    on no response. Query entries whose value is None are left out. `accept`: the Accept header (default
    application/json), e.g. informer.METADATA_LIST_ACCEPT."""
    headers = {"Accept": accept or "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    q = [(k, v) for k, v in (query or {}).items() if v is not None]
    m, url, hdrs, b, post = api.param_serialize(
        method, path, query_params=q or None, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    # The REST layer json.dumps bodies of any */*+json content type and keeps our Content-Type, except
    # that it rewrites application/json-patch+json to strategic-merge for dict bodies. We always send
    # an explicit application/merge-patch+json for patches, which it leaves alone.
    try:
        resp = api.call_api(m, url, header_params=hdrs, body=b, post_params=post, _request_timeout=timeout_s)
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeError(f"{method} {path}: no response: {e}", status=0) from e
    except kubernetes.client.ApiException as e:
        raise KubeError(f"{method} {path}: {e.reason}", status=e.status or 0, reason=e.reason) from e
    return resp.response


def decode_body(data: bytes) -> Any:
    """A response body as JSON; a non-JSON body becomes ``{"message": <first 200 bytes>}``."""
    try:
        return _decoder.decode(data) if data else {}
    except msgspec.DecodeError:
        return {"message": data[:200].decode("utf-8", "replace")}


def request(
    api: kubernetes.client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str | None = None,
    timeout_s: float | tuple[float, float] | None = DEFAULT_TIMEOUT_S,
    accept: str | None = None,
) -> JSON:
    """One API request, JSON in and out. Non-2xx -> KubeError with the server's status and message."""
    raw = open_response(api, method, path, query=query, body=body, content_type=content_type, timeout_s=timeout_s,
                        accept=accept)
    try:
        data = raw.data
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeError(f"{method} {path}: reading response failed: {e}", status=0) from e
    finally:
        raw.release_conn()
    status = raw.status
    decoded = decode_body(data)
    if not 200 <= status < 300:
        reason = decoded.get("reason") if isinstance(decoded, dict) else None
        message = decoded.get("message") if isinstance(decoded, dict) else None
        raise KubeError(
            f"{method} {path}: HTTP {status} {reason or ''}: {message or ''}".strip(),
            status=status,
            reason=reason,
        )
    if not isinstance(decoded, dict):
        raise KubeError(f"{method} {path}: expected a JSON object, got {type(decoded).__name__}", status=status)
    return decoded

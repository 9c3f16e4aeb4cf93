"""Proxy building blocks: request facts and clamp, context windows, OpenAI shapes, catalog, activity writes, fit."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest
from flexinfer.proxy import openai
from flexinfer.proxy.activity import ActivityWriter
from flexinfer.proxy.body import BadBody, clamp_body, context_window_tokens, read_facts
from flexinfer.proxy.catalog import Catalog, slice_endpoints
from flexinfer.proxy.fit import NodeAnswer, classify
from flexinfer.proxy.routing import Fit
from hypothesis import given, settings
from hypothesis import strategies as hs

from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.model import parse_model
from flexinfer.nodes import fleet_node_objects

from .lab import homelab_fit

MANAGED = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}


# --- request facts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "message"), [
    (b"", "empty"),
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"messages": []}', "no \"model\" field"),
    (b'{"model": 5}', "non-empty string"),
    (b'{"model": "  "}', "non-empty string"),
    (b'{"model": "' + b"x" * 300 + b'"}', "longer than 253"),
    (b"[" * 100_000, "must be a JSON object"),
    (b'{"model": "m", "x": ' + b"[" * 100_000, "not valid JSON"),  # deep nesting in a skipped field
])
def test_bad_bodies_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(BadBody, match=message):
        read_facts(body)


def test_facts_skip_everything_but_the_routing_fields() -> None:
    f = read_facts(b'{"messages": [{"role": "user", "content": "hi"}], "model": "chat", "stream": true, '
                   b'"max_completion_tokens": 9000, "max_tokens": 10, "extra": {"deep": [1, 2, 3]}}')
    assert (f.model, f.stream, f.max_tokens) == ("chat", True, 9000)
    assert read_facts(b'{"model": "m", "max_tokens": true}').max_tokens is None


FUZZ = settings(max_examples=max(1, int(os.environ.get("FLEXINFER_FUZZ_EXAMPLES", "300")) // 3), deadline=None)
JSONISH = hs.recursive(hs.none() | hs.booleans() | hs.integers() | hs.text(max_size=5),
                       lambda c: hs.lists(c, max_size=3) | hs.dictionaries(hs.text(max_size=3), c, max_size=3),
                       max_leaves=8)


@given(hs.dictionaries(hs.sampled_from(["model", "stream", "max_tokens", "messages", "x"]), JSONISH))
@FUZZ
def test_any_json_object_gives_facts_or_bad_body(doc: dict) -> None:
    try:
        f = read_facts(msgspec.json.encode(doc))
    except BadBody:
        assert not isinstance(doc.get("model"), str) or not doc["model"].strip() or len(doc["model"]) > 253
    else:
        assert f.model == doc["model"]


def test_clamp_lowers_only_values_at_or_above_the_window() -> None:
    body = b'{"model": "m", "max_tokens": 8192, "messages": [{"role": "user", "content": "x"}]}'
    out, original = clamp_body(body, 8192, 512)
    assert original == 8192 and msgspec.json.decode(out)["max_tokens"] == 7680
    assert msgspec.json.decode(out)["messages"] == [{"role": "user", "content": "x"}]
    same, none = clamp_body(b'{"model": "m", "max_tokens": 8191}', 8192, 512)
    assert none is None and same == b'{"model": "m", "max_tokens": 8191}'  # untouched bytes
    both, orig = clamp_body(b'{"max_tokens": 10, "max_completion_tokens": 99999}', 8192, 512)
    assert orig == 99999 and msgspec.json.decode(both) == {"max_tokens": 10, "max_completion_tokens": 7680}
    tiny, _ = clamp_body(b'{"max_tokens": 300}', 256, 512)
    assert msgspec.json.decode(tiny)["max_tokens"] == 1  # never 0 or negative
    assert clamp_body(b'{"max_tokens": 9000}', None, 512) == (b'{"max_tokens": 9000}', None)


def _model(backend: str, config: dict, gpu: dict | None = None) -> object:
    spec = {"backend": backend, "source": "HF://org/m", "config": config}
    if gpu is not None:
        spec["gpu"] = gpu
    return parse_model({"apiVersion": "ai.flexinfer/v1alpha2", "kind": "Model", "metadata": {"name": "m"},
                        "spec": spec})


@pytest.mark.parametrize(("backend", "config", "window"), [
    ("vllm", {"maxModelLen": 32768}, 32768),
    ("vllm", {"contextLength": 8192}, 8192),
    ("llamacpp", {"ctxSize": 4096, "ggufFile": "m.gguf"}, 4096),
    ("ollama", {"numCtx": 2048}, 2048),
    ("mlc-llm", {"contextWindowSize": 16384, "maxNumSequence": 4}, 16384),
    ("vllm", {}, None),
    ("llamacpp", {"contextSize": 8192}, None),  # not a key the llama.cpp recipe passes: the server's default
])
def test_context_window_is_what_the_server_is_started_with(backend: str, config: dict, window: int | None) -> None:
    assert context_window_tokens(_model(backend, config, {"vendor": "nvidia"})) == window


# --- OpenAI shapes ------------------------------------------------------------------------------------
def test_error_body_is_the_openai_shape() -> None:
    doc = msgspec.json.decode(openai.error_body(404, "The model 'x' does not exist", "model_not_found"))
    assert doc == {"error": {"message": "The model 'x' does not exist", "type": "invalid_request_error",
                             "param": None, "code": "model_not_found"}}
    assert openai.retry_after_header(0.2) == {"Retry-After": "1"} and openai.retry_after_header(None) == {}


# --- catalog ------------------------------------------------------------------------------------------
def _slice(name: str, svc: str, endpoints: list, labels: dict | None = None, family: str = "IPv4") -> dict:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc, **(labels or MANAGED)}},
            "addressType": family, "ports": [{"name": "http", "port": 8000}], "endpoints": endpoints}


def test_slices_count_only_ready_endpoints_written_by_the_endpointslice_controller() -> None:
    eps = [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
           {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
           {"addresses": ["10.0.0.3"], "conditions": {"ready": True, "terminating": True}},
           {"addresses": ["10.0.0.4"]}]  # ready unknown: treated as ready
    assert slice_endpoints(_slice("s", "m", eps)) == ("m", ("http://10.0.0.1:8000", "http://10.0.0.4:8000"))
    assert slice_endpoints(_slice("s", "m", eps, labels={"endpointslice.kubernetes.io/managed-by": "someone"})) \
        == (None, ())
    assert slice_endpoints(_slice("s", "m", [{"addresses": ["fd00::1"]}], family="IPv6")) == \
        ("m", ("http://[fd00::1]:8000",))
    assert slice_endpoints(_slice("s", "m", [{"addresses": ["x.example"]}], family="FQDN")) == ("m", ())


def _model_obj(name: str, labels: list[str], phase: str = "Idle") -> dict:
    return {"apiVersion": "ai.flexinfer/v1alpha2", "kind": "Model", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"backend": "vllm", "source": "HF://org/" + name, "serviceLabels": labels,
                     "gpu": {"vendor": "nvidia", "vramEstimateMB": 8000}, "config": {"maxModelLen": 4096}},
            "status": {"phase": phase, "lastActiveTime": "2026-01-01T00:00:00Z",
                       "loadingSubstage": "LoadingWeights", "loadingProgressAt": "2026-01-01T00:01:00Z"}}


def test_catalog_follows_models_and_slices_and_tells_listeners() -> None:
    cat = Catalog()
    told: list[set[str]] = []
    cat.add_listener(told.append)
    cat.add_listener(lambda names: 1 / 0)  # a broken listener does not stop the others or the informer
    cat.on_model_event("SYNC", {"items": [_model_obj("a", ["chat"]), _model_obj("b", [], "Loading"),
                                          {"metadata": {"name": "junk"}, "spec": {"backend": "nope"}}]})
    assert set(cat.states) == {"a", "b"} and not cat.synced  # invalid Models are not routed
    assert cat.states["a"].substage == "" and cat.states["b"].substage == "LoadingWeights"
    assert cat.states["a"].context_tokens == 4096 and cat.states["a"].last_active_unix == 1767225600.0
    cat.on_slice_event("SYNC", {"items": [_slice("a-1", "a", [{"addresses": ["10.0.0.9"]}])]})
    assert cat.synced and cat.states["a"].endpoints == ("http://10.0.0.9:8000",)
    cat.on_slice_event("ADDED", _slice("a-2", "a", [{"addresses": ["10.0.0.8"]}]))
    assert cat.states["a"].endpoints == ("http://10.0.0.8:8000", "http://10.0.0.9:8000")
    cat.on_slice_event("DELETED", _slice("a-1", "a", []))
    cat.on_model_event("DELETED", _model_obj("b", []))
    assert "b" not in cat.states and cat.states["a"].endpoints == ("http://10.0.0.8:8000",)
    assert told[-1] == {"b"} and {"a"} in told


# --- activity writes ----------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_activity_is_batched_to_one_write_per_model_per_interval() -> None:
    clock = Clock()
    writes: list[tuple[str, float]] = []
    aw = ActivityWriter(lambda m, t: writes.append((m, t)), lambda m, t: None, interval_s=10, clock=clock,
                        monotonic=clock)

    async def scenario() -> None:
        for _ in range(100):  # a burst of requests: one write
            aw.touch("a")
            aw.touch("b")
            await aw.flush()
        assert writes == [("a", 1000.0), ("b", 1000.0)]
        clock.t += 3
        aw.touch("a")
        await aw.flush()
        assert len(writes) == 2  # within the interval: pending
        clock.t += 7
        await aw.flush()
        assert writes[-1] == ("a", 1003.0) and len(writes) == 3  # the newest time, once the interval passed
        clock.t += 60
        await aw.flush()
        assert len(writes) == 3  # no traffic, no writes

    asyncio.run(scenario())


def test_requests_in_flight_keep_writing_and_failures_are_retried() -> None:
    clock = Clock()
    writes: list[tuple[str, float]] = []
    fail = {"n": 1}

    def write(m: str, t: float) -> None:
        if fail["n"]:
            fail["n"] -= 1
            raise RuntimeError("API server said 503")
        writes.append((m, t))

    aw = ActivityWriter(write, lambda m, t: None, interval_s=10, clock=clock, monotonic=clock,
                        busy=lambda: ["long"], stored_time=lambda m: 1200.0 if m == "other" else None)

    async def scenario() -> None:
        aw.touch("other", 1100.0)  # the stored time is already newer (another replica): no write
        await aw.flush()  # the first write of "long" fails
        clock.t += 10
        await aw.flush()
        clock.t += 10
        await aw.flush()
        assert writes == [("long", 1010.0), ("long", 1020.0)]

    asyncio.run(scenario())
    assert aw.metrics.status_writes.labels("activity", "error")._value.get() == 1


def test_activation_is_rate_limited_and_a_failed_write_is_retried_at_once() -> None:
    clock = Clock()
    calls: list[str] = []
    fail = {"n": 1}

    def activate(m: str, t: float) -> None:
        calls.append(m)
        if fail["n"]:
            fail["n"] -= 1
            raise RuntimeError("connection refused")

    aw = ActivityWriter(lambda m, t: None, activate, interval_s=10, clock=clock, monotonic=clock)

    async def scenario() -> list[bool]:
        return [await aw.activate("m") for _ in range(3)]

    assert asyncio.run(scenario()) == [False, True, False] and calls == ["m", "m"]
    clock.t += 11
    assert asyncio.run(scenario())[0] is True


# --- fit ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("gpu", "selector", "fit", "why"), [
    ({"vendor": "amd", "vramEstimateMB": 12000}, {"flexinfer.ai/gpu.arch": "gfx1100"}, Fit.FITS, "fits on"),
    ({"vendor": "amd", "vramEstimateMB": 30000}, {"flexinfer.ai/gpu.arch": "gfx1100"}, Fit.NEVER, "too small"),
    ({"vendor": "amd", "vramEstimateMB": 8000}, {"flexinfer.ai/gpu.arch": "gfx9999"}, Fit.NEVER,
     "didn't match Pod's node selector"),
    ({"vendor": "auto", "vramEstimateMB": 4000}, {}, Fit.FITS, "fits on"),
])
def test_fit_asks_kube_scheduler_filters_and_the_extender_policy(gpu: dict, selector: dict, fit: Fit,
                                                                       why: str) -> None:
    doc = {"apiVersion": "ai.flexinfer/v1alpha2", "kind": "Model", "metadata": {"name": "m", "namespace": "ns"},
           "spec": {"backend": "llamacpp", "source": "HF://org/m", "gpu": gpu, "nodeSelector": selector}}
    v = homelab_fit().check(parse_model(doc))
    assert v.fit is fit and why in v.reason


def test_classify_tells_full_from_never() -> None:
    too_small = NodeAnswer("a", False, False, "GPU memory too small for model")
    full = NodeAnswer("b", False, True, "Insufficient free GPU memory")
    assert classify([too_small, full]).fit is Fit.AFTER_RELEASE
    assert classify([too_small, NodeAnswer("c", False, False, "GPU memory too small for model")]).reason == \
        "0/2 nodes: 2x GPU memory too small for model"
    assert classify([too_small, NodeAnswer("d", True, False, "")]).fit is Fit.FITS
    assert classify([]).fit is Fit.NEVER


def test_fit_respects_taints_and_the_gpu_resource_like_kube_scheduler() -> None:
    from flexinfer.proxy.fit import NodeStore, PlacementFit, trim_node

    doc = {"apiVersion": "ai.flexinfer/v1alpha2", "kind": "Model", "metadata": {"name": "m", "namespace": "ns"},
           "spec": {"backend": "vllm", "source": "HF://org/m", "gpu": {"vendor": "nvidia", "vramEstimateMB": 8000}}}
    nodes = fleet_node_objects(load_fleet(default_fleet_path()))
    fit = PlacementFit(NodeStore().replace(nodes))
    tainted = [n for n in nodes if (n.get("spec") or {}).get("taints")]
    assert tainted, "the homelab has a tainted GPU node"
    v = fit.check(parse_model(doc))
    assert v.fit is Fit.NEVER and "untolerated taint" in v.reason, v
    doc["spec"]["tolerations"] = [{"key": t["key"], "operator": "Exists"} for n in tainted for t in n["spec"]["taints"]]
    doc["metadata"]["generation"] = 2
    assert fit.check(parse_model(doc)).fit is Fit.FITS
    assert set(trim_node(nodes[0])) == {"metadata", "spec", "status"}


def _quality_model(name: str, vram_mib: int, generation: int = 1) -> dict:
    """A Model only the quality lane's RX 7900 XTX (cblevins-7900xtx, 24560 MiB) can take."""
    return {"apiVersion": "ai.flexinfer/v1alpha2", "kind": "Model",
            "metadata": {"name": name, "namespace": "ns", "generation": generation},
            "spec": {"backend": "llamacpp", "source": "HF://org/m",
                     "gpu": {"vendor": "amd", "vramEstimateMB": vram_mib},
                     "nodeSelector": {"flexinfer.ai/lane": "quality"}}}


def _bound_pod(name: str, vram_mib: int, node: str = "cblevins-7900xtx") -> dict:
    """The pod of Model `name` as bound by kube-scheduler, before its server uses any GPU memory."""
    from flexinfer.controller import placement
    from flexinfer.controller.render import render_deployment

    pod = placement.pod_of(render_deployment(parse_model(_quality_model(name, vram_mib)), 1, "amd"))
    pod["metadata"].update(name=f"{name}-7d9f-abcde", uid=f"uid-{name}")
    pod["spec"] = {**pod["spec"], "nodeName": node,
                   "containers": [{**c, "env": [{"name": "SECRET", "value": "x"}]} for c in pod["spec"]["containers"]]}
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return pod


def test_fit_counts_a_bound_model_that_has_not_loaded_yet_and_does_not_wake_for_it() -> None:
    """Ollama-style lazy loading: the pod of `lazy` is bound to the only node `big` can use, but the agent sees
    no memory used yet. Counted as the extender counts it, the GPU is full for `big` (AFTER_RELEASE, not FITS),
    so the proxy wakes `small`, which fits elsewhere, instead of a Model the extender would not place."""
    from flexinfer.proxy.fit import NodeStore, PlacementFit, PodStore, trim_pod
    from flexinfer.proxy.routing import Choose, FitVerdict, Wait, choose

    from .test_proxy_routing import st

    nodes = fleet_node_objects(load_fleet(default_fleet_path()))
    big = parse_model(_quality_model("big", 20000))
    assert PlacementFit(NodeStore().replace(nodes), pods=PodStore().replace([])).check(big).fit is Fit.FITS
    lazy = _bound_pod("lazy", 16000)
    fit = PlacementFit(NodeStore().replace(nodes), pods=PodStore().replace([lazy]))
    v = fit.check(big)
    assert v.fit is Fit.AFTER_RELEASE and not v.released and "Insufficient free GPU memory" in v.reason, v
    assert PlacementFit(NodeStore().replace(nodes)).check(big).fit is Fit.FITS  # agents' numbers only: the old bug
    assert "env" not in trim_pod(lazy)["spec"]["containers"][0]  # only what the check reads is kept
    plan = Choose("x", ("big", "small"))
    states = {"big": st("big", ("x",), priority=90), "small": st("small", ("x",), priority=10)}
    assert choose(plan, states, {"big": v, "small": FitVerdict(Fit.FITS)}) == Wait("small", True, "activating small")


def test_fit_releases_the_group_holders_pods_as_the_controller_does() -> None:
    """`big` would displace its group holder `holder` (bound, 16000 MiB, still loading). With the holder's pod
    released it fits; with a second bound model (`lazy`, 8000 MiB, not loaded) on the card it does not, even
    with the holder gone, and routing refuses it instead of waking it into a preemption the controller refuses."""
    from flexinfer.proxy.fit import NodeStore, PlacementFit, PodStore
    from flexinfer.proxy.routing import Choose, Refuse, choose

    from .test_proxy_routing import st

    nodes = fleet_node_objects(load_fleet(default_fleet_path()))
    big = parse_model(_quality_model("big", 20000))
    holder = _bound_pod("holder", 16000)
    fit = PlacementFit(NodeStore().replace(nodes), pods=PodStore().replace([holder]))
    assert fit.check(big).fit is Fit.AFTER_RELEASE
    v = fit.check(big, ["holder"])
    assert v.fit is Fit.FITS and v.released
    crowded = PlacementFit(NodeStore().replace(nodes), pods=PodStore().replace([holder, _bound_pod("lazy", 8000)]))
    v = crowded.check(big, ["holder"])
    assert v.fit is Fit.AFTER_RELEASE and v.released and "8000 MiB committed to bound pods" in v.reason, v
    states = {"big": st("big", ("x",), group="g", priority=90),
              "holder": st("holder", ("y",), "Ready", group="g", priority=10)}
    plan = Choose("big", ("big",), frozenset({"big"}), {}, None, {"big": ("holder",)})
    r = choose(plan, states, {"big": v})
    assert isinstance(r, Refuse) and r.status == 503
    assert "fits on no node even with the GPU holder holds released" in r.message

"""The proxy against real objects: fake API server, the real controller, simulated kubelets/EndpointSlices,
OpenAI-compatible fake model servers behind the Models' Services."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import pytest
from flexinfer.controller import placement
from flexinfer.controller.render import render_deployment
from flexinfer.proxy.routing import Fit
from flexinfer.proxy.server import ProxyConfig

from flexinfer import keys
from flexinfer.model import parse_model

from .lab import NS, example, homelab_fit, lab, model_doc, wait_for

pytestmark = pytest.mark.integration


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_cold_start_from_zero_through_the_proxy() -> None:
    with lab([model_doc("m1", ["chat"])]) as lb:
        wait_for(lambda: lb.status("m1").get("phase") == "Idle", what="m1 Idle")
        assert lb.replicas("m1") == 0
        t0 = time.monotonic()
        r = lb.chat("chat")
        assert r.status_code == 200, r.text
        assert r.headers["x-flexinfer-model"] == "m1" and r.json()["model"] == "m1"
        assert time.monotonic() - t0 < 10
        assert keys.MODEL_ACTIVATE in lb.annotations("m1")  # activated the way `flexinfer activate` does
        assert lb.replicas("m1") == 1  # the endpoint is ready; the controller says Ready on its next pass
        wait_for(lambda: lb.status("m1").get("phase") == "Ready", what="m1 Ready")
        wait_for(lambda: lb.status("m1").get("lastActiveTime"), what="lastActiveTime written")
        m = lb.metrics
        assert m.activations.labels("m1")._value.get() == 1
        assert m.queue_wait.labels("m1", "ready")._sum.get() > 0
        assert m.requests.labels("m1", "chat", "200")._value.get() == 1
        page = httpx.get(lb.proxy.ops_url + "/metrics").text
        assert 'flexinfer_proxy_time_to_first_byte_seconds_count{api="chat",model="m1"} 1.0' in page
        assert httpx.get(lb.proxy.ops_url + "/readyz").status_code == 200


def test_label_routing_balances_ready_models_and_never_wakes_an_idle_one() -> None:
    docs = [model_doc("a", ["fast"], min_replicas=1), model_doc("b", ["fast"], min_replicas=1),
            model_doc("c", ["fast"])]
    with lab(docs) as lb:
        wait_for(lambda: lb.serving("a") and lb.serving("b"), what="a and b serving")
        seen = [lb.chat("fast").headers["x-flexinfer-model"] for _ in range(20)]
        assert seen.count("a") == seen.count("b") == 10  # idle balancer: least in flight, ties in turn
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: lb.chat("fast").status_code, range(40)))
        assert codes == [200] * 40
        assert lb.servers["a"].stats.requests + lb.servers["b"].stats.requests == 60
        assert keys.MODEL_ACTIVATE not in lb.annotations("c") and lb.replicas("c") == 0
        assert lb.servers["c"].stats.requests == 0
        # Endpoints can serve before the controller's next pass writes phase Ready: wait for the status.
        wait_for(lambda: all(lb.proxy.proxy.catalog.get(n).phase == "Ready" for n in ("a", "b")),
                 what="a and b Ready in status")
        listing = {e["id"]: e["flexinfer"] for e in lb.client.get("/v1/models").json()["data"]}
        assert listing["fast"] == {"kind": "alias", "models": ["a", "b", "c"], "phase": "Ready", "serving": True}
        assert listing["c"]["phase"] == "Idle" and listing["a"]["contextWindowTokens"] == 4096
        assert lb.client.get("/v1/models/fast").json()["flexinfer"]["kind"] == "alias"
        assert lb.client.get("/v1/models/nope").status_code == 404


def _quality_lane() -> list[dict]:
    """The example quality lane (14B P100 always on, 32B P80, R1 P70 on one GPU), with the overlapping label
    `reasoning` on both the 14B and R1 (docs/proxy.md). Caches off: the simulated kubelet runs no prefetch Jobs."""
    return [example("qwen3-14b-mlc", serviceLabels=["textgen", "chat", "reasoning"], cache={"strategy": "None"}),
            example("qwen3-32b-quality", serviceLabels=["quality"], cache={"strategy": "None"}),
            example("deepseek-r1", serviceLabels=["reasoning"])]


def test_r1_vs_14b_the_ready_model_serves_and_r1_is_never_activated_into_a_timeout() -> None:
    with lab(_quality_lane(), fit=homelab_fit()) as lb:
        wait_for(lambda: lb.serving("qwen3-14b-mlc"), what="the always-on 14B serving")
        r = lb.chat("reasoning")
        assert r.status_code == 200 and r.headers["x-flexinfer-model"] == "qwen3-14b-mlc"
        # asked by name while the 14B (priority 100) serves traffic: R1 (priority 70) cannot preempt it, so the
        # proxy says so at once instead of activating it and holding the request until the cold-start timeout
        t0 = time.monotonic()
        r = lb.chat("deepseek-r1")
        assert r.status_code == 503 and time.monotonic() - t0 < 5  # not the 10 min cold-start timeout
        err = error_of(r)
        assert err["code"] == "model_unavailable" and "cannot preempt qwen3-14b-mlc" in err["message"]
        assert 500 <= int(r.headers["Retry-After"]) <= 600  # when the 14B's 10 min idle timeout runs out
        assert keys.MODEL_ACTIVATE not in lb.annotations("deepseek-r1") and lb.replicas("deepseek-r1") == 0
        assert lb.chat("textgen").headers["x-flexinfer-model"] == "qwen3-14b-mlc"
        assert lb.metrics.unavailable.labels("deepseek-r1", "cannot_start")._value.get() == 1


def test_fit_check_activates_the_candidate_that_can_be_placed() -> None:
    big = example("qwen3-32b-quality", serviceLabels=["big"], cache={"strategy": "None"},
                  gpu={"vendor": "amd", "vramEstimateMB": 30000})  # no gfx1100 card has 30000 MiB
    small = example("deepseek-r1", serviceLabels=["big"], gpu={"vendor": "amd", "vramEstimateMB": 18000})
    with lab([big, small], fit=homelab_fit()) as lb:
        r = lb.chat("big")
        assert r.status_code == 200 and r.headers["x-flexinfer-model"] == "deepseek-r1"
        assert keys.MODEL_ACTIVATE not in lb.annotations("qwen3-32b-quality")
        r = lb.chat("qwen3-32b-quality")
        err = error_of(r)
        assert r.status_code == 503 and "fits on no node" in err["message"] and "too small" in err["message"]


def _lazy_model_pod() -> dict:
    """The pod of a Model `lazy` (16000 MiB) that Ollama loads on its first request, bound to the quality lane's
    RX 7900 XTX and running: the node's agent shows no memory used for it yet."""
    doc = model_doc("lazy")
    doc["metadata"]["namespace"] = NS
    doc["spec"].update(backend="ollama", source="ollama://llama3.1:8b", gpu={"vendor": "amd", "vramEstimateMB": 16000})
    pod = placement.pod_of(render_deployment(parse_model(doc), 1, "amd"))
    pod["metadata"].update(name="lazy-6f7d8-x2x9z", uid="uid-lazy")
    pod["spec"] = {**pod["spec"], "nodeName": "cblevins-7900xtx"}
    pod["status"] = {"phase": "Running"}
    return pod


def test_fit_check_counts_a_bound_model_that_has_not_loaded_yet() -> None:
    """`big` (20000 MiB, priority 90) fits only on the quality lane's card, by the agent's numbers; but `lazy` is
    bound there and commits 16000 MiB. The proxy's own fit check (informers over the fake API server: Nodes and
    the namespace's bound model pods) counts it as the extender does, so `small` is woken, not `big`."""
    big = model_doc("big", ["chat"], priority=90)
    big["spec"].update(gpu={"vendor": "amd", "vramEstimateMB": 20000, "priority": 90},
                       nodeSelector={"flexinfer.ai/lane": "quality"})
    small = model_doc("small", ["chat"], priority=10)
    small["spec"].update(gpu={"vendor": "amd", "vramEstimateMB": 8000, "priority": 10})
    with lab([big, small], fit_check="extender", pods=[_lazy_model_pod()]) as lb:
        fit = lb.proxy.proxy.fit
        wait_for(lambda: fit.store.synced and fit.pods.synced, what="the fit check's caches")
        assert len(fit.pods.pods()) == 1  # the bound model pod of the namespace, nothing else
        r = lb.chat("chat")
        assert r.status_code == 200 and r.headers["x-flexinfer-model"] == "small"
        assert keys.MODEL_ACTIVATE not in lb.annotations("big") and lb.replicas("big") == 0
        v = fit.check(parse_model({**big, "metadata": {**big["metadata"], "namespace": NS}}))
        assert v.fit is Fit.AFTER_RELEASE and "16000 MiB committed to bound pods" in v.reason, v


def test_stalled_load_answers_503_with_retry_after() -> None:
    cfg = ProxyConfig(stall_timeout_s=1.0, retry_after_s=42)
    with lab([model_doc("stuck", ["chat"], cold="10m")], config=cfg, stalled={"stuck"}) as lb:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(lb.chat, "stuck")
            # the controller publishes what the pod shows: its server runs, its startup probe never passes
            wait_for(lambda: lb.status("stuck").get("loadingSubstage") == "LoadingWeights", 10.0,
                     "the controller's loading substage")
            assert lb.status("stuck").get("loadingProgressAt")
            r = first.result(timeout=15)
        assert r.status_code == 503 and r.headers["Retry-After"] == "42"
        err = error_of(r)
        assert err["code"] == "model_loading_stalled" and "LoadingWeights" in err["message"]
        t0 = time.monotonic()
        again = lb.chat("chat")  # a new request for a stalled load fails fast, it is not queued
        assert again.status_code == 503 and time.monotonic() - t0 < 3.0
        assert lb.metrics.unavailable.labels("stuck", "stalled")._value.get() == 2


def test_cold_start_timeout_and_full_queue() -> None:
    cfg = ProxyConfig(max_queue_per_model=1, retry_after_s=7)
    with lab([model_doc("slow", [], cold="1s"), model_doc("slow2", [])], config=cfg,
             load_s={"slow": 30.0, "slow2": 1.5}) as lb:
        r = lb.chat("slow")
        assert r.status_code == 503 and error_of(r)["code"] == "model_cold_start_timeout"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(lb.chat, "slow2")
            wait_for(lambda: lb.proxy.proxy._queued.get("slow2"), what="one request queued")
            full = lb.chat("slow2")
            assert full.status_code == 429 and full.headers["Retry-After"] == "7"
            assert error_of(full)["code"] == "queue_full"
            assert waiting.result(timeout=15).status_code == 200


def test_max_tokens_is_clamped_at_the_forward_seam() -> None:
    with lab([model_doc("m", [], min_replicas=1, config={"maxModelLen": 8192})],
             server_opts={"m": {"max_model_len": 8192}}) as lb:
        wait_for(lambda: lb.serving("m"), what="m serving")
        r = lb.chat("m", max_tokens=8192)
        assert r.status_code == 200, r.text  # the server would have said 400: no room for the prompt
        assert lb.servers["m"].stats.bodies[-1][1]["max_tokens"] == 8192 - 512
        lb.chat("m", max_tokens=100)
        assert lb.servers["m"].stats.bodies[-1][1]["max_tokens"] == 100
        assert lb.metrics.clamped.labels("m")._value.get() == 1


def test_server_sent_events_pass_through_unbuffered_and_a_disconnect_releases_upstream_at_once() -> None:
    opts = {"m": {"token_delay_s": 0.3}}
    with lab([model_doc("m", [], min_replicas=1)], server_opts=opts) as lb:
        wait_for(lambda: lb.serving("m"), what="m serving")
        server = lb.servers["m"]
        with lb.client.stream("POST", "/v1/chat/completions",
                              json={"model": "m", "stream": True, "max_tokens": 5}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            t0 = time.monotonic()
            arrivals = []
            for line in r.iter_lines():
                if line:
                    arrivals.append((time.monotonic() - t0, line))
        assert arrivals[-1][1] == "data: [DONE]" and len(arrivals) == 6
        # each event arrives when the server sends it (0.3 s apart), not all at the end
        assert arrivals[-2][0] - arrivals[0][0] > 0.8, arrivals
        server.token_delay_s = 0.05
        with lb.client.stream("POST", "/v1/chat/completions",
                              json={"model": "m", "stream": True, "max_tokens": 400}) as r:
            it = r.iter_lines()
            got = [next(it) for _ in range(3)]
            assert got[0].startswith("data: ")
            t_cut = time.monotonic()
        wait_for(lambda: server.stats.streams_cut == 1 and server.stats.open_streams == 0, 5.0,
                 "the model server to see the cut")
        assert time.monotonic() - t_cut < 5.0  # 400 tokens would have taken 20 s
        wait_for(lambda: lb.metrics.client_disconnects.labels("m")._value.get() == 1, 2.0, "disconnect counted")
        assert lb.chat("m").status_code == 200  # and the proxy keeps serving


def test_last_active_time_keeps_a_busy_model_from_idling_out() -> None:
    # idle timeout 3 s; one streamed request of ~7 s: writes while in flight keep the model up, and the model
    # scales to zero once the traffic stops
    docs = [model_doc("m", [], idle="3s")]
    with lab(docs, server_opts={"m": {"token_delay_s": 0.25}}, activity_interval_s=1.0) as lb:
        assert lb.chat("m", max_tokens=1).status_code == 200
        replicas: list[int] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                replicas.append(lb.replicas("m"))
                time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        lb.fake.clear_requests()
        t0 = time.monotonic()
        with lb.client.stream("POST", "/v1/chat/completions",
                              json={"model": "m", "stream": True, "max_tokens": 28}) as r:
            assert sum(1 for line in r.iter_lines() if line) == 29
        took = time.monotonic() - t0
        done.set()
        watcher.join()
        assert took > 6.0 and replicas and set(replicas) == {1}, replicas
        writes = [q for q in lb.fake.requests("PATCH") if q.path.endswith("/models/m/status")
                  and "lastActiveTime" in str(q.body)]
        assert 2 <= len(writes) <= took / 1.0 + 2  # batched: at most one per interval
        wait_for(lambda: lb.replicas("m") == 0, 12.0, "m scaled to zero after the traffic stopped")
        wait_for(lambda: lb.status("m").get("phase") == "Idle", 5.0, "m Idle")


def test_bad_input_gets_openai_errors_and_the_proxy_keeps_serving() -> None:
    cfg = ProxyConfig(max_body_bytes=4096)
    with lab([model_doc("m", ["chat"], min_replicas=1), model_doc("gone", [], min_replicas=1)], config=cfg) as lb:
        wait_for(lambda: lb.serving("m") and lb.serving("gone"), what="serving")
        post = lb.client.post
        r = post("/v1/chat/completions", content=b"not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"]
        r = post("/v1/chat/completions", json={"messages": []})
        assert r.status_code == 400 and error_of(r)["message"].startswith("the request has no \"model\" field")
        r = lb.chat("gpt-4")
        assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
        r = post("/v1/embeddings", json={"model": "m", "input": "x" * 5000})
        assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
        assert lb.client.get("/nope").status_code == 404
        r = post("/v1/images/generations", content=b"\x00\x01", headers={"Content-Type": "image/png"})
        assert r.status_code == 400 and "X-FlexInfer-Model" in error_of(r)["message"]
        lb.servers["gone"].stop()  # the model server refuses connections
        r = lb.chat("gone")
        assert r.status_code == 502 and "refused the connection" in error_of(r)["message"]
        assert lb.metrics.upstream_errors.labels("gone", "connect")._value.get() == 1
        assert lb.metrics.requests.labels("unknown", "chat", "404")._value.get() == 1
        assert lb.metrics.requests.labels("gone", "chat", "502")._value.get() == 1
        e = post("/v1/embeddings", json={"model": "chat", "input": ["a", "b"]})
        assert e.status_code == 200 and len(e.json()["data"]) == 2
        c = post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2})
        assert c.status_code == 200 and c.json()["choices"][0]["text"] == "t0 t1"


def test_api_keys_guard_every_route_and_are_not_passed_upstream() -> None:
    key = "k" * 24
    with lab([model_doc("m", [], min_replicas=1)], config=ProxyConfig(api_keys=frozenset({key}))) as lb:
        wait_for(lambda: lb.serving("m"), what="m serving")
        r = lb.chat("m")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert lb.client.get("/v1/models").status_code == 401
        assert lb.client.post("/v1/chat/completions", json={"model": "m"},
                              headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = lb.client.post("/v1/chat/completions", json={"model": "m"}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        assert "Authorization" not in lb.servers["m"].stats.bodies[-1][2]


def test_no_activate_leaves_scaled_to_zero_models_alone() -> None:
    with lab([model_doc("m", [])], config=ProxyConfig(activate=False)) as lb:
        r = lb.chat("m")
        assert r.status_code == 503 and error_of(r)["code"] == "model_scaled_to_zero"
        assert keys.MODEL_ACTIVATE not in lb.annotations("m")


def test_hostile_requests_over_a_socket_get_errors_never_a_crash() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hs

    paths = hs.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/other/thing",
                             "/v1/models/x", "/", "/v1/../etc"])
    bodies = hs.one_of(hs.binary(max_size=300), hs.text(max_size=100).map(str.encode),
                       hs.dictionaries(hs.sampled_from(["model", "max_tokens", "stream"]),
                                       hs.one_of(hs.none(), hs.integers(), hs.text(max_size=8), hs.booleans()))
                       .map(lambda d: httpx.Request("POST", "http://x", json=d).read()))
    with lab([model_doc("m", ["chat"], min_replicas=1)], config=ProxyConfig(max_body_bytes=2048)) as lb:
        wait_for(lambda: lb.serving("m"), what="m serving")

        @given(hs.sampled_from(["GET", "POST", "PUT", "DELETE"]), paths, bodies)
        @settings(max_examples=int(__import__("os").environ.get("FLEXINFER_FUZZ_EXAMPLES", "300")) // 3,
                  deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(method: str, path: str, body: bytes) -> None:
            r = lb.client.request(method, path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code < 500 or r.status_code in (502, 503), (r.status_code, r.text)
            if r.status_code >= 400:
                error_of(r)

        fuzz()
        assert lb.chat("chat").status_code == 200


def test_shutdown_final_activity_flush_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """An API server that never answers the last lastActiveTime writes cannot hold the proxy past its drain plus
    FINAL_FLUSH_TIMEOUT_S (the pod's termination grace would kill it mid-write)."""
    import asyncio

    from flexinfer.proxy import runner

    monkeypatch.setattr(runner, "FINAL_FLUSH_TIMEOUT_S", 0.3)
    with lab([model_doc("m1", min_replicas=1)]) as lb:
        wait_for(lambda: lb.serving("m1"), 15, "m1 serving")
        started = threading.Event()

        async def hung_flush() -> None:
            started.set()
            await asyncio.sleep(60)

        monkeypatch.setattr(lb.proxy.proxy.activity, "flush", hung_flush)
        t0 = time.monotonic()
        lb.proxy.stop(timeout_s=20)
        took = time.monotonic() - t0
        assert started.is_set() and lb.proxy._thread is not None and not lb.proxy._thread.is_alive()
        assert took < 2.0 + 0.3 + 3.0, took  # drain (grace_s=2 in the lab, nothing in flight) + the bound + slack


def test_other_v1_paths_pass_through_to_the_routed_model() -> None:
    """Issue 18: a pass-through for other /v1/* paths, routed like the rest: by the JSON body's `model` (name or
    service label), or by the X-FlexInfer-Model header when the body is not JSON (audio, files)."""
    with lab([model_doc("m", ["rerank"], min_replicas=1), model_doc("n", [], min_replicas=1)]) as lb:
        wait_for(lambda: lb.serving("m") and lb.serving("n"), what="serving")
        r = lb.client.post("/v1/rerank", json={"model": "rerank", "query": "q", "documents": ["a", "b"]})
        assert r.status_code == 200, r.text
        assert r.json() == {"server": "m", "method": "POST", "path": "/v1/rerank",
                            "content_type": "application/json", "body_bytes": len(r.request.content)}
        r = lb.client.post("/v1/audio/transcriptions", content=b"RIFF",
                           headers={"Content-Type": "audio/wav", "X-FlexInfer-Model": "n"})
        assert r.status_code == 200 and r.json()["server"] == "n" and r.json()["body_bytes"] == 4, r.text
        r = lb.client.get("/v1/files", headers={"X-FlexInfer-Model": "m"})
        assert r.status_code == 200 and r.json()["server"] == "m" and r.json()["method"] == "GET", r.text
        assert lb.servers["m"].stats.requests == 2 and lb.servers["n"].stats.requests == 1
        assert lb.metrics.requests.labels("m", "other", "200")._value.get() == 2
        assert lb.metrics.requests.labels("n", "other", "200")._value.get() == 1

"""The proxy part of the demo: a request arrives at flexinfer-proxy for a service label whose Model is scaled
to zero, and the whole path runs for real on the embedded cluster: the proxy routes the label, checks with
kube-scheduler's node filters and the extender's policy that the Model can be placed, activates it, holds the
request while the controller scales it up and the scheduling loop places its pod, then forwards it (clamping
max_tokens at the context window) to an OpenAI-compatible fake model server behind the Model's Service
endpoint.

The label is the proxy's own choice among the examples: the first whose request would wake a Model outside
a shared group (the group story is told before), preferring Models with a context window in their spec (so
the clamp shows). What is printed is read back from what happened: the answer, the Model's phase, the
placement, the body the model server received and the proxy's metrics.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from flexinfer.proxy import routing
from flexinfer.proxy.fit import FitChecker
from flexinfer.proxy.main import build
from flexinfer.proxy.runner import ProxyServer
from flexinfer.proxy.server import ProxyConfig
from flexinfer.sim.cluster import Attempt, DemoCluster
from flexinfer.sim.modelserver import FakeModelServer
from flexinfer.sim.serving import publish_ready_endpoints

WAIT_LIMIT_S = 20.0  # the demo's bound on the cold start (the proxy's own limit is the Model's coldStartTimeout)


@dataclass
class ProxyStory:
    label: str = ""
    model: str = ""
    phase_before: str = ""
    status_code: int | None = None
    routed_to: str = ""
    error: str = ""
    waited_s: float = 0.0
    max_tokens_sent: int | None = None
    max_tokens_received: int | None = None
    context_tokens: int | None = None
    last_active: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)

    def heading(self) -> str:
        if not self.label:
            return "No service label in the examples would wake a Model through the proxy: no proxy story to play."
        head = f"A request for '{self.label}' arrives at flexinfer-proxy: {self.model} was {self.phase_before}"
        if self.status_code != 200:
            return head + f"; the proxy answered {self.status_code}: {self.error}"
        placed = next((a for a in self.attempts if a.model == self.model and a.node), None)
        where = f", placed on {placed.node}" + (f" (GPU {placed.gpus})" if placed.gpus else "") if placed else ""
        text = (head + f"; the proxy activated it{where}, held the request {self.waited_s:.1f} s while it loaded, "
                f"then {self.routed_to} answered 200")
        if self.max_tokens_received is not None and self.max_tokens_received != self.max_tokens_sent:
            text += (f" (max_tokens {self.max_tokens_sent} clamped to {self.max_tokens_received}: its context "
                     f"window is {self.context_tokens} tokens)")
        if self.last_active:
            text += f"; status.lastActiveTime {self.last_active}"
        return text


def _pick(states: Any, fit: FitChecker, now: float) -> tuple[str, str] | None:
    """(label, Model) the proxy would wake, per the module docstring."""
    labels = sorted({lab for s in states.values() for lab in s.labels})
    found: list[tuple[int, str, str]] = []
    for label in labels:
        plan = routing.route(label, states, now)
        if not isinstance(plan, routing.Choose):
            continue
        fits = {n: fit.check(states[n].model, plan.releasing.get(n, ())) for n in plan.candidates
                if states[n].model is not None}
        got = routing.choose(plan, states, fits)
        if isinstance(got, routing.Wait) and got.activate and states[got.model].group is None:
            found.append((0 if states[got.model].context_tokens else 1, label, got.model))
    return min(found)[1:] if found else None


def play(cluster: DemoCluster, progress: Any = lambda _msg: None) -> ProxyStory:
    story = ProxyStory()
    built = build(cluster.api, cluster.namespace, ProxyConfig(request_timeout_s=WAIT_LIMIT_S),
                  fit_check="extender", activity_interval_s=5.0, clock=cluster.clock)
    fit = built.proxy.fit
    server = ProxyServer(built.proxy, cleanup=built.informers, grace_s=1.0)
    servers: dict[str, FakeModelServer] = {}
    try:
        server.start()
        catalog = built.proxy.catalog
        deadline = time.monotonic() + 10
        while not catalog.synced and time.monotonic() < deadline:
            time.sleep(0.02)
        choice = _pick(catalog.states, fit, cluster.clock())
        if choice is None:
            return story
        story.label, story.model = choice
        st = catalog.states[story.model]
        story.phase_before, story.context_tokens = st.phase, st.context_tokens
        servers[story.model] = FakeModelServer(story.model, max_model_len=st.context_tokens).start()
        story.max_tokens_sent = st.context_tokens or 256
        progress(f"a request for '{story.label}' arrives at flexinfer-proxy ({story.model} is {st.phase})")
        body = {"model": story.label, "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": story.max_tokens_sent}
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, server.url + "/v1/chat/completions", json=body,
                                 timeout=WAIT_LIMIT_S + 5)
            while not answer.done() and time.monotonic() - t0 < WAIT_LIMIT_S + 5:
                story.attempts.extend(cluster.settle())  # controller, scheduling loop, kubelets, agents
                publish_ready_endpoints(cluster.api, cluster.namespace, servers)  # the EndpointSlice controller
                time.sleep(0.05)
            r = answer.result()
        story.waited_s = time.monotonic() - t0
        story.status_code = r.status_code
        story.routed_to = r.headers.get("x-flexinfer-model", "")
        if r.status_code != 200:
            story.error = (r.json().get("error") or {}).get("message", r.text[:200])
        bodies = servers[story.model].stats.bodies
        if bodies:
            story.max_tokens_received = bodies[-1][1].get("max_tokens")
        built.proxy.activity.touch(story.model)
        server.call(built.proxy.activity.flush)
        story.status = cluster.model_status()
        story.last_active = story.status.get(story.model, {}).get("lastActiveTime", "")
        return story
    finally:
        server.stop()
        for s in servers.values():
            s.stop()

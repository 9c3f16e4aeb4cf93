"""Bad input never crashes: arbitrary JSON bodies and junk node/pod annotations give a verdict or a 400."""

from __future__ import annotations

import json
import os

from flexinfer.extender.cache import NodeCache
from flexinfer.extender.http import BadRequest, parse_request_body
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import PolicyConfig, evaluate
from flexinfer.extender.service import Extender
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexinfer import keys
from flexinfer.nodes import view_of

from .ext_fixtures import NOW, gpu, model_pod, node_obj

# Examples per test scale with env FLEXINFER_FUZZ_EXAMPLES (default 300, as in CI; bench/ raises it).
EXAMPLES = int(os.environ.get("FLEXINFER_FUZZ_EXAMPLES", "300"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["Pod", "pod", "Nodes", "nodes", "NodeNames", "nodenames", "metadata", "items", "spec",
                        "annotations", "containers", "resources", "limits", keys.RESOURCE_NVIDIA,
                        keys.POD_VRAM_ESTIMATE_MB, keys.POD_BACKEND, keys.POD_VENDOR, "name"])
structured = st.recursive(
    st.none() | st.integers(-5, 10**6) | st.text(max_size=8) | st.booleans(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)

EXT = Extender(NodeCache())
EXT.cache.replace_all([node_obj("a", [gpu(0)], NOW)])


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, structured))
def test_any_json_body_parses_or_is_a_400(doc) -> None:
    body = json.dumps(doc).encode()
    try:
        p = parse_request_body(body, EXT)
    except BadRequest as e:
        assert e.status == 400 and e.message
        return
    out = EXT.filter(p.req, p.names, p.views)
    assert len(out.verdicts) == len(p.names)


@settings(max_examples=max(1, EXAMPLES // 3), deadline=None)
@given(st.dictionaries(st.sampled_from([keys.ANN_GPU_STATE, keys.ANN_AGENT_STATUS, keys.ANN_OBSERVED_AT]),
                       st.text(max_size=60), max_size=3),
       st.dictionaries(st.sampled_from([keys.LABEL_VENDOR, keys.LABEL_ARCH, keys.LABEL_COUNT]), st.text(max_size=10),
                       max_size=3))
def test_junk_node_metadata_never_raises(ann, labels) -> None:
    v = view_of(node_obj("n", [gpu(0)], NOW, extra_annotations=ann, extra_labels=labels))
    out = evaluate(requirements_from_dict(model_pod(1000)), v, NOW, PolicyConfig())
    assert out.feasible or out.reason


@settings(max_examples=max(1, EXAMPLES // 3), deadline=None)
@given(st.dictionaries(st.sampled_from([keys.POD_VRAM_ESTIMATE_MB, keys.POD_BACKEND, keys.POD_VENDOR,
                                        keys.POD_PREFERRED_ARCHS, keys.POD_JIT_POLICY]), st.text(max_size=20)),
       st.one_of(st.integers(-3, 2000), st.text(max_size=5), st.floats(allow_nan=False)))
def test_junk_pod_values_never_raise(ann, count) -> None:
    pod = model_pod(1000, extra=ann)
    pod["spec"]["containers"][0]["resources"]["limits"][keys.RESOURCE_NVIDIA] = count
    r = requirements_from_dict(pod)
    v = evaluate(r, view_of(node_obj("n", [gpu(0)], NOW)), NOW, PolicyConfig())
    assert v.feasible or v.reason

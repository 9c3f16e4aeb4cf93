"""Whose object is it? The controller only ever writes objects that carry its Model's controller
ownerReference (pure; no I/O).

A Deployment, Service, cache PVC or Job named like a Model but without that reference belongs to someone
else (created by hand, by another tool, or by a previous Model of the same name whose garbage collection is
not finished). The controller never adopts, modifies or deletes it: the Model goes to phase Failed with
reason ``OwnershipConflict`` naming the object, an Event says the same, and nothing of that Model is written
until the object is gone or the Model is renamed.
"""

from __future__ import annotations

from typing import Any

from flexinfer import keys
from flexinfer.model import Model

JSON = dict[str, Any]
REASON = "OwnershipConflict"


def owned_by(obj: JSON, model: Model) -> bool:
    """True when ``obj`` names ``model`` as its controller owner (by UID; by kind and name when the Model
    has no UID, as in offline tests)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if not isinstance(ref, dict) or not ref.get("controller"):
            continue
        if ref.get("kind") != keys.MODEL_KIND or str(ref.get("apiVersion", "")).split("/")[0] != keys.MODEL_GROUP:
            continue
        if model.uid:
            if ref.get("uid") == model.uid:
                return True
        elif ref.get("name") == model.name:
            return True
    return False


def conflict_message(kind: str, obj: JSON) -> str:
    meta = obj.get("metadata") or {}
    where = f"{kind} {meta.get('namespace') or ''}/{meta.get('name') or ''}".replace(" /", " ")
    owners = [f"{r.get('kind')}/{r.get('name')}" for r in meta.get("ownerReferences") or [] if isinstance(r, dict)]
    whose = f"it is owned by {', '.join(owners)}" if owners else "it has no ownerReference to this Model"
    return (f"{where} already exists and is not managed by this Model ({whose}); FlexInfer leaves it alone. "
            f"Delete or rename that {kind}, or give the Model another name")

"""The only module that talks to the Kubernetes API server.

Plain REST on the official client's connection (auth, TLS, retries of the transport), with dict
bodies in API form. Supported calls: get/list of any of the few kinds the operator touches,
server-side apply of the children it owns (field manager `vlm-operator`; re-applying the same
object is a no-op, so reconciles are idempotent), create-if-absent for Jobs (whose pod template is
immutable), status merge patches (guarded by the resourceVersion that was read: a 409 means the
object changed, so the reconcile runs again on fresh data and status never goes backwards),
metadata patches, Events, and the leader-election Lease (get, create, update).
Ownership: `apply` and `create` never adopt or change an object whose controller ownerReference
is not the one the new object names; they raise ForeignObject and leave it as it is.
Credentials: in-cluster when running in a pod, else `$KUBECONFIG`.

Every request goes through `_request`, which refuses a (kind, verb) missing from `ACCESS`: that
table is the operator's whole API use (kopf's watches aside, see main.KOPF_ACCESS), and
tests/unit/test_chart_rbac.py compares it with the chart's ClusterRole both ways. Writes are
counted per kind and verb (`vlm_operator_api_writes_total`), so each replica shows what it wrote.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from vlm_operator import metrics
from vlm_operator.api import GROUP, VERSION

log = logging.getLogger("vlm_operator.kube")
FIELD_MANAGER = "vlm-operator"

#: kind -> (api prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "TrainingShape": (f"/apis/{GROUP}/{VERSION}", "trainingshapes", False),
    "TrainerJob": (f"/apis/{GROUP}/{VERSION}", "trainerjobs", True),
    "Checkpoint": (f"/apis/{GROUP}/{VERSION}", "checkpoints", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "Pod": ("/api/v1", "pods", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Service": ("/api/v1", "services", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Event": ("/api/v1", "events", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
}

#: (kind[/subresource]) -> the verbs the operator uses on it: everything `_request` lets through.
#: Server-side apply and merge/JSON patches are `patch` (an apply of an absent object creates
#: it, so applied kinds need `create` too); a GET without a name is `list`.
# Children are read before they are written: `apply`/`create` only touch an object whose
# controller is the TrainerJob (by UID), so `get` comes with every child kind.
ACCESS: dict[str, frozenset[str]] = {
    "TrainingShape": frozenset({"get", "list"}),
    "TrainingShape/status": frozenset({"patch"}),
    "TrainerJob": frozenset({"get", "list"}),
    "TrainerJob/status": frozenset({"patch"}),
    # patch: drop the owner on promotion; in-use marks of initFrom jobs (reconcile/init_from)
    "Checkpoint": frozenset({"get", "list", "patch"}),
    "Checkpoint/status": frozenset({"patch"}),
    "Job": frozenset({"get", "create", "patch"}),  # patch: suspend/resume
    "Pod": frozenset({"list"}),
    "ConfigMap": frozenset({"get", "create", "patch"}),
    "Service": frozenset({"get", "create", "patch"}),
    "ServiceAccount": frozenset({"get", "create", "patch"}),
    "Role": frozenset({"get", "create", "patch"}),
    "RoleBinding": frozenset({"get", "create", "patch"}),
    "NetworkPolicy": frozenset({"get", "create", "patch"}),
    "Event": frozenset({"create"}),
    "Lease": frozenset({"get", "create", "update"}),
}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

_client: client.ApiClient | None = None
_lock = threading.Lock()


def api_client() -> client.ApiClient:
    global _client
    with _lock:
        if _client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            _client = client.ApiClient()
        return _client


def _path(kind: str, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
    prefix, plural, namespaced = KINDS[kind]
    p = prefix
    if namespaced and namespace:
        p += f"/namespaces/{quote(namespace)}"
    p += f"/{plural}"
    if name:
        p += f"/{quote(name)}"
    if sub:
        p += f"/{sub}"
    return p


def _call(
    method: str,
    path: str,
    body: Any = None,
    query: dict[str, Any] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    c = api_client()
    url = c.configuration.host + path + (f"?{urlencode(query)}" if query else "")
    headers = {"Accept": "application/json", "Content-Type": content_type}
    c.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
    r = c.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
    data = r.read()
    if not 200 <= r.status < 300:
        raise ApiException(status=r.status, reason=r.reason, http_resp=r)
    return json.loads(data) if data else {}


def _check(key: str, verb: str) -> str:
    if verb not in ACCESS.get(key, ()):
        raise PermissionError(f"{verb} {key} is not in kube.ACCESS (nor in the ClusterRole)")
    return key


def _request(
    method: str,
    kind: str,
    namespace: str | None = None,
    name: str | None = None,
    sub: str = "",
    body: Any = None,
    query: dict[str, Any] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One API call, checked against `ACCESS` (an unlisted call is a bug, not a 403 later)."""
    verb = _VERBS.get(method) or ("get" if name else "list")
    key = _check(f"{kind}/{sub}" if sub else kind, verb)
    if method != "GET":
        metrics.API_WRITES.labels(kind=key, verb=verb).inc()
    return _call(method, _path(kind, namespace, name, sub), body, query, content_type)


def get(kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return _request("GET", kind, namespace, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def list_objects(
    kind: str, namespace: str | None = None, labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
    return _request("GET", kind, namespace, query=query).get("items", [])


class ForeignObject(Exception):
    """A child's name is taken by an object this owner does not control: never touch it.

    ``earlier``: its controller is an earlier object of the owner's kind and name (a TrainerJob
    deleted and created again); the garbage collector removes it soon, so the caller waits."""

    def __init__(self, existing: dict[str, Any], want: dict[str, Any]) -> None:
        meta = existing["metadata"]
        self.kind, self.name = existing.get("kind", "?"), meta["name"]
        mine = _controller(want) or {}
        theirs = _controller(existing)
        self.earlier = theirs is not None and (theirs.get("kind"), theirs.get("name")) == (
            mine.get("kind"),
            mine.get("name"),
        )
        owner = (
            f"{theirs.get('kind')}/{theirs.get('name')} uid {theirs.get('uid')}"
            if theirs
            else "none"
        )
        super().__init__(
            f"{self.kind} {self.name} exists and was not created for "
            f"{mine.get('kind')}/{mine.get('name')} uid {mine.get('uid')} (its controller: "
            f"{owner}); it was left untouched"
        )


def _controller(obj: dict[str, Any]) -> dict[str, Any] | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def controller_uid(obj: dict[str, Any]) -> str | None:
    """UID of the object's controller (its ownerReference with controller: true), if any."""
    return (_controller(obj) or {}).get("uid")


def check_owned(existing: dict[str, Any], want: dict[str, Any]) -> None:
    """Raise ForeignObject unless `existing` has the controller `want` names (same UID)."""
    mine, theirs = _controller(want), _controller(existing)
    if mine is None or theirs is None or theirs.get("uid") != mine.get("uid"):
        raise ForeignObject(existing, want)


def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Create `obj`, or server-side apply it (force) over the object it controls already.

    Ownership first: `obj` names its controller (ownerReference with controller: true); an
    existing object of that name with another controller, or none, raises ForeignObject and is
    left untouched (no apply, no adoption). A new object is created with POST, which fails
    instead of adopting when someone else's object appears meanwhile."""
    meta = obj["metadata"]
    existing = get(obj["kind"], meta.get("namespace"), meta["name"])
    if existing is None:
        created, _ = create(obj)
        return created
    check_owned(existing, obj)
    query = {"fieldManager": FIELD_MANAGER, "force": "true"}
    ns, name = meta.get("namespace"), meta["name"]
    return _request("PATCH", obj["kind"], ns, name, "", obj, query, "application/apply-patch+yaml")


def create(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create `obj`; when it exists already return the existing one, if `obj`'s controller
    (its ownerReference with controller: true) controls it; else raise ForeignObject.
    (object, created?)"""
    meta = obj["metadata"]
    try:
        query = {"fieldManager": FIELD_MANAGER}
        return _request("POST", obj["kind"], meta.get("namespace"), body=obj, query=query), True
    except ApiException as e:
        if e.status != 409:
            raise
    existing = get(obj["kind"], meta.get("namespace"), meta["name"])
    if existing is None:  # deleted between the two calls: let the next reconcile retry
        raise ApiException(status=409, reason=f"{obj['kind']} {meta['name']} is being deleted")
    check_owned(existing, obj)
    return existing, False


def merge_patch(
    kind: str,
    namespace: str | None,
    name: str,
    patch: dict[str, Any],
    status: bool = False,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """A JSON merge patch. With `resource_version` the API server applies it only to that
    version of the object (409 Conflict otherwise): a status computed from an old read can
    never overwrite a newer one."""
    if resource_version:
        patch = {
            **patch,
            "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version},
        }
    sub = "status" if status else ""
    return _request(
        "PATCH", kind, namespace, name, sub, patch, content_type="application/merge-patch+json"
    )


def patch_status(obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """Merge `status` into the status of `obj`, as of the resourceVersion it was read at."""
    meta = obj["metadata"]
    return merge_patch(
        obj["kind"],
        meta.get("namespace"),
        meta["name"],
        {"status": status},
        status=True,
        resource_version=meta.get("resourceVersion"),
    )


def json_patch(kind: str, namespace: str | None, name: str, ops: list[dict[str, Any]]) -> None:
    ct = "application/json-patch+json"
    _request("PATCH", kind, namespace, name, body=ops, content_type=ct)


def delete(kind: str, namespace: str | None, name: str, propagation: str = "Background") -> None:
    try:
        _request("DELETE", kind, namespace, name, body={"propagationPolicy": propagation})
    except ApiException as e:
        if e.status != 404:
            raise


def replace(obj: dict[str, Any]) -> dict[str, Any]:
    """PUT the whole object; its metadata.resourceVersion makes it a compare-and-swap (409)."""
    meta = obj["metadata"]
    return _request("PUT", obj["kind"], meta.get("namespace"), meta["name"], body=obj)


def post_event(obj: dict[str, Any], type: str, reason: str, message: str) -> None:
    """A core/v1 Event about one of our objects (what `kubectl describe` shows). Best effort."""
    meta = obj["metadata"]
    ns = meta.get("namespace") or "default"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": ns},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        _request("POST", "Event", ns, body=event)
    except ApiException as e:
        log.warning("could not post event %s for %s/%s: %s", reason, ns, meta["name"], e.reason)

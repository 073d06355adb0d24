"""Where URIs live inside a trainer pod.

`pvc://<claim>/<path>` becomes `/mnt/pvc/<claim>/<path>` with the claim mounted once per pod
(read-write when anything writes to it); `file:///<path>` is already a path in the pod; anything
else (a hub id such as `Qwen/Qwen3-VL-8B-Instruct`) is passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MOUNT_ROOT = "/mnt/pvc"


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


@dataclass
class StorageMounts:
    """Collects the claims a pod needs while URIs are translated to container paths."""

    claims: dict[str, bool] = field(default_factory=dict)  # claim -> writable

    def path(self, uri: str, writable: bool = False) -> str:
        if uri.startswith("pvc://"):
            claim, _, rest = uri[len("pvc://") :].partition("/")
            self.claims[claim] = self.claims.get(claim, False) or writable
            return f"{MOUNT_ROOT}/{claim}/{rest}".rstrip("/")
        if uri.startswith("file://"):
            return uri[len("file://") :]
        return uri

    def volumes(self) -> list[dict[str, Any]]:
        return [
            {"name": volume_name(c), "persistentVolumeClaim": {"claimName": c, "readOnly": not w}}
            for c, w in sorted(self.claims.items())
        ]

    def mounts(self) -> list[dict[str, Any]]:
        return [
            {"name": volume_name(c), "mountPath": f"{MOUNT_ROOT}/{c}", "readOnly": not w}
            for c, w in sorted(self.claims.items())
        ]


def volume_name(claim: str) -> str:
    return f"pvc-{claim}".replace(".", "-")[:63].rstrip("-")

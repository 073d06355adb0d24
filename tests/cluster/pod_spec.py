"""Turns a Pod (as a dict, the API's JSON) into what a local process needs: env, mounts, argv.

Supported, as a kubelet does it: env `value`, `fieldRef` (metadata.name/namespace/uid,
metadata.labels['k'], metadata.annotations['k'] -- which carries the Job completion index --,
spec.nodeName, spec.serviceAccountName, status.podIP/hostIP), `resourceFieldRef`,
`configMapKeyRef`, `secretKeyRef`, `envFrom`; `$(VAR)` expansion in env, command and args;
volumes emptyDir, configMap, secret, downwardAPI, projected (serviceAccountToken, configMap,
secret, downwardAPI), persistentVolumeClaim (through its bound PV's hostPath) and hostPath;
`subPath` and `readOnly` mounts; the security context a kubelet enforces (`container_identity`):
`runAsUser`/`runAsGroup` (container over pod), `runAsNonRoot` (a container that would run as
uid 0 is refused with CreateContainerConfigError), supplementary groups (`fsGroup`,
`supplementalGroups`), `readOnlyRootFilesystem`, `allowPrivilegeEscalation: false` (no_new_privs);
and volume ownership (`set_volume_ownership`): emptyDirs are world-writable, and with `fsGroup`
every emptyDir, PVC, ConfigMap, Secret, downwardAPI and projected volume is group-owned by it
(setgid folders; group-writable where the volume is writable). Assumed: every pod's IP is
127.0.0.1 (all pods share the host's network); images have no filesystem of their own and run as
root unless the pod says otherwise (no USER in the image), so a container needs a `command`
unless its image is in the runner's entrypoint table.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

POD_IP = "127.0.0.1"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodConfigError(Exception):
    """The kubelet's CreateContainerConfigError: a referenced object or key is missing."""


class ApiReader(Protocol):
    """What resolving a pod needs from the API server (kept small so it is easy to fake)."""

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def pvc_host_path(self, namespace: str, claim: str) -> str | None: ...
    def token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> str: ...


@dataclass(frozen=True)
class Mount:
    source: str  # a local file or folder
    target: str  # the container path
    read_only: bool


#: The user an image runs as when the pod sets none: our images have no USER, so root.
IMAGE_UID, IMAGE_GID = 0, 0


@dataclass(frozen=True)
class Identity:
    """Who a container's process is, and how its root filesystem is mounted."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    read_only_root: bool
    no_new_privs: bool


def container_identity(pod: dict[str, Any], container: dict[str, Any]) -> Identity:
    """The kubelet's reading of the pod and container securityContext (container wins)."""
    psc = pod["spec"].get("securityContext") or {}
    csc = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return csc[key] if csc.get(key) is not None else psc.get(key)

    uid, gid = pick("runAsUser"), pick("runAsGroup")
    where = f'(pod: "{pod["metadata"]["name"]}", container: {container["name"]})'
    if pick("runAsNonRoot"):
        if uid is None and IMAGE_UID == 0:
            raise PodConfigError(f"container has runAsNonRoot and image will run as root {where}")
        if uid == 0:
            raise PodConfigError(f"container's runAsUser breaks non-root policy {where}")
    groups = [psc["fsGroup"]] if psc.get("fsGroup") is not None else []
    groups += list(psc.get("supplementalGroups") or [])
    return Identity(
        uid=IMAGE_UID if uid is None else int(uid),
        gid=IMAGE_GID if gid is None else int(gid),
        groups=tuple(dict.fromkeys(int(g) for g in groups)),
        read_only_root=bool(csc.get("readOnlyRootFilesystem")),
        no_new_privs=csc.get("allowPrivilegeEscalation") is False,
    )


def set_volume_ownership(vol: dict[str, Any], path: Path, fs_group: int | None) -> None:
    """What the kubelet does to a volume before the containers start (never to a hostPath)."""
    if "hostPath" in vol:
        return
    if "emptyDir" in vol:
        path.chmod(0o777)  # an emptyDir is writable by whoever the container runs as
    if fs_group is None:
        return
    writable = "emptyDir" in vol or "persistentVolumeClaim" in vol
    for root, dirs, files in os.walk(path):
        for p in [root, *(os.path.join(root, n) for n in dirs + files)]:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chown(p, -1, fs_group)
            add = stat.S_IRGRP | (stat.S_IWGRP if writable else 0)
            if stat.S_ISDIR(st.st_mode):
                add |= stat.S_IXGRP | stat.S_ISGID  # new files inherit the group
            os.chmod(p, stat.S_IMODE(st.st_mode) | add)


_FIELD_LABEL = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")


def field_value(pod: dict[str, Any], path: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    if m := _FIELD_LABEL.fullmatch(path):
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
        "status.hostIP": POD_IP,
        "status.hostIPs": POD_IP,
    }
    if path not in simple:
        raise PodConfigError(f"unsupported fieldRef {path!r}")
    return simple[path]


def resource_value(container: dict[str, Any], resource: str) -> str:
    """resourceFieldRef: the limit (else request), CPU rounded up to whole cores; a node default
    when neither is set. Divisors are not applied (no test needs them)."""
    kind, _, name = resource.partition(".")
    res = container.get("resources") or {}
    raw = (res.get(kind) or {}).get(name) or (res.get("requests") or {}).get(name)
    if raw is None:
        return "16" if name == "cpu" else str(64 * 2**30)
    if name == "cpu" and str(raw).endswith("m"):
        return str(max(1, -(-int(str(raw)[:-1]) // 1000)))
    return str(raw)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$(X)` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_.-]*\)|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, text)


def _map_data(obj: dict[str, Any] | None, is_secret: bool) -> dict[str, bytes]:
    """The key -> bytes content of a ConfigMap or Secret (None: an absent optional object)."""
    if obj is None:
        return {}
    text_key, bin_key = ("stringData", "data") if is_secret else ("data", "binaryData")
    out = {k: base64.b64decode(v) for k, v in (obj.get(bin_key) or {}).items()}
    out |= {k: v.encode() for k, v in (obj.get(text_key) or {}).items()}
    return out


def container_env(
    pod: dict[str, Any], container: dict[str, Any], api: ApiReader, service_env: dict[str, str]
) -> dict[str, str]:
    """The container's environment, in the kubelet's order: service vars, envFrom, then env."""
    ns = pod["metadata"]["namespace"]
    env = dict(service_env)
    for src in container.get("envFrom") or []:
        ref = src.get("configMapRef") or src.get("secretRef")
        is_secret = "secretRef" in src
        obj = (api.secret if is_secret else api.config_map)(ns, ref["name"])
        if obj is None and not ref.get("optional"):
            raise PodConfigError(
                f"{'secret' if is_secret else 'configmap'} {ref['name']!r} not found"
            )
        for k, v in _map_data(obj, is_secret).items():
            env[src.get("prefix", "") + k] = v.decode()
    for var in container.get("env") or []:
        name, vf = var["name"], var.get("valueFrom")
        if vf is None:
            env[name] = _expand(var.get("value", ""), env)
        elif "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_value(container, vf["resourceFieldRef"]["resource"])
        else:
            ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
            is_secret = "secretKeyRef" in vf
            data = _map_data(
                (api.secret if is_secret else api.config_map)(ns, ref["name"]), is_secret
            )
            if ref["key"] in data:
                env[name] = data[ref["key"]].decode()
            elif not ref.get("optional"):
                raise PodConfigError(
                    f"key {ref['key']!r} not found in {ref['name']!r} (env {name})"
                )
    return env


def container_argv(
    container: dict[str, Any], env: dict[str, str], entrypoints: dict[str, list[str]]
) -> list[str]:
    """command + args with `$(VAR)` expanded; the image's entrypoint when there is no command."""
    command = list(container.get("command") or [])
    if not command:
        image = container.get("image", "")
        match = next((ep for pat, ep in entrypoints.items() if fnmatch.fnmatch(image, pat)), None)
        if match is None:
            raise PodConfigError(
                f"container {container['name']!r}: no command, and image {image!r} has no "
                "known entrypoint"
            )
        command = list(match)
    return [_expand(a, env) for a in command + list(container.get("args") or [])]


def _write_items(folder: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None) -> None:
    pairs = [(it["key"], it["path"]) for it in items] if items else [(k, k) for k in data]
    for key, rel in pairs:
        if key not in data:
            raise PodConfigError(f"key {key!r} not found")
        f = folder / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data[key])


def _downward_items(folder: Path, pod: dict[str, Any], items: list[dict[str, Any]]) -> None:
    for it in items:
        f = folder / it["path"]
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(field_value(pod, it["fieldRef"]["fieldPath"]) if "fieldRef" in it else "")


def materialise_volume(
    vol: dict[str, Any], pod: dict[str, Any], api: ApiReader, pod_dir: Path
) -> Path:
    """Give a pod volume a local folder (written now for ConfigMaps, Secrets and tokens)."""
    ns, name = pod["metadata"]["namespace"], vol["name"]
    folder = pod_dir / "volumes" / name
    if "hostPath" in vol:
        p = Path(vol["hostPath"]["path"])
        if vol["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
            p.mkdir(parents=True, exist_ok=True)
        return p
    if "persistentVolumeClaim" in vol:
        claim = vol["persistentVolumeClaim"]["claimName"]
        path = api.pvc_host_path(ns, claim)
        if path is None:
            raise PodConfigError(f"persistentvolumeclaim {claim!r} is not bound")
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if "configMap" in vol or "secret" in vol:
        is_secret = "secret" in vol
        src = vol["secret" if is_secret else "configMap"]
        ref = src.get("secretName") if is_secret else src.get("name")
        obj = (api.secret if is_secret else api.config_map)(ns, ref)
        if obj is None and not src.get("optional"):
            raise PodConfigError(f"{'secret' if is_secret else 'configmap'} {ref!r} not found")
        _write_items(folder, _map_data(obj, is_secret), src.get("items"))
    elif "downwardAPI" in vol:
        _downward_items(folder, pod, vol["downwardAPI"].get("items") or [])
    elif "projected" in vol:
        for s in vol["projected"].get("sources") or []:
            if "serviceAccountToken" in s:
                t = s["serviceAccountToken"]
                token = api.token(pod, t.get("audience"), int(t.get("expirationSeconds", 3607)))
                (folder / t["path"]).write_text(token)
            elif "downwardAPI" in s:
                _downward_items(folder, pod, s["downwardAPI"].get("items") or [])
            elif "configMap" in s or "secret" in s:
                is_secret = "secret" in s
                ref = s["secret" if is_secret else "configMap"]
                obj = (api.secret if is_secret else api.config_map)(ns, ref["name"])
                if obj is None and not ref.get("optional"):
                    raise PodConfigError(f"projected {ref['name']!r} not found")
                _write_items(folder, _map_data(obj, is_secret), ref.get("items"))
    elif "emptyDir" not in vol:
        raise PodConfigError(f"volume {name!r}: unsupported volume type {sorted(vol)}")
    return folder


def container_mounts(container: dict[str, Any], volumes: dict[str, Path]) -> list[Mount]:
    mounts = []
    for vm in container.get("volumeMounts") or []:
        src = volumes[vm["name"]]
        if vm.get("subPath"):
            src = src / vm["subPath"]
            if not src.exists():
                src.mkdir(parents=True)
                parent = src.parent.stat()  # as writable, and for the same group, as its volume
                os.chown(src, -1, parent.st_gid)
                src.chmod(stat.S_IMODE(parent.st_mode))
        mounts.append(Mount(str(src), vm["mountPath"], bool(vm.get("readOnly"))))
    return mounts


def hosts_file(pod: dict[str, Any]) -> str:
    """/etc/hosts for the pod: its own names, and for Indexed Job pods their siblings' names.

    Every pod is 127.0.0.1, so `<job>-0.<service>` (torchrun's MASTER_ADDR) resolves to the peer.
    """
    meta, spec = pod["metadata"], pod["spec"]
    host = spec.get("hostname") or meta["name"]
    names = {host}
    sub, ns = spec.get("subdomain"), meta["namespace"]
    if sub:
        hosts = [host]
        if m := re.fullmatch(r"(.+)-(\d+)", host):
            hosts += [f"{m.group(1)}-{i}" for i in range(64)]
        for h in hosts:
            names |= {
                f"{h}.{sub}",
                f"{h}.{sub}.{ns}",
                f"{h}.{sub}.{ns}.svc",
                f"{h}.{sub}.{ns}.svc.cluster.local",
            }
    return "127.0.0.1\tlocalhost " + " ".join(sorted(names)) + "\n::1\tlocalhost\n"

"""The pod runner's translation of a Pod into env, argv, volumes and /etc/hosts."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import pod_spec

pytestmark = pytest.mark.unit


class FakeApi:
    """An in-memory ApiReader: the objects a test declares, nothing else."""

    def __init__(self, cms: dict[str, dict] | None = None, secrets: dict[str, dict] | None = None):
        self.cms, self.secrets = cms or {}, secrets or {}

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cms.get(name)

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get(name)

    def pvc_host_path(self, namespace: str, claim: str) -> str | None:
        return None

    def token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> str:
        return f"token-for-{pod['metadata']['name']}-{audience}"


INDEX = "batch.kubernetes.io/job-completion-index"


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "job-1-abc",
            "namespace": "ns1",
            "uid": "u-1",
            "labels": {"app": "x"},
            "annotations": {INDEX: "1"},
        },
        "spec": {"nodeName": "fake-gpu-0", "serviceAccountName": "trainer", **spec},
    }


def test_env_field_refs_config_maps_secrets_and_expansion() -> None:
    api = FakeApi(
        cms={"cfg": {"data": {"A": "1", "B": "two"}}},
        secrets={"s": {"data": {"TOKEN": base64.b64encode(b"sekret").decode()}}},
    )
    c = {
        "name": "main",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "IDX",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX}']"}},
            },
            {"name": "TOK", "valueFrom": {"secretKeyRef": {"name": "s", "key": "TOKEN"}}},
            {"name": "GREETING", "value": "pod $(POD) rank $(IDX) $$(NOPE)"},
        ],
    }
    env = pod_spec.container_env(pod(), c, api, {"KUBERNETES_SERVICE_HOST": "127.0.0.1"})
    assert env["CFG_A"] == "1" and env["CFG_B"] == "two"
    assert env["POD"] == "job-1-abc" and env["IDX"] == "1"
    assert env["TOK"] == "sekret"
    assert env["GREETING"] == "pod job-1-abc rank 1 $(NOPE)"
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"


def test_missing_config_map_key_is_a_config_error() -> None:
    c = {
        "name": "m",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}],
    }
    with pytest.raises(pod_spec.PodConfigError, match="key 'k' not found"):
        pod_spec.container_env(pod(), c, FakeApi(cms={"cfg": {"data": {}}}), {})
    c["env"][0]["valueFrom"]["configMapKeyRef"]["optional"] = True
    assert "X" not in pod_spec.container_env(pod(), c, FakeApi(cms={"cfg": {"data": {}}}), {})


def test_argv_uses_command_args_and_entrypoint_table() -> None:
    env = {"N": "3"}
    assert pod_spec.container_argv(
        {"name": "m", "command": ["echo"], "args": ["$(N)"]}, env, {}
    ) == ["echo", "3"]
    ep = {"*vlm-trainer*": ["vlm-trainer"]}
    c = {"name": "m", "image": "ghcr.io/x/vlm-trainer:1", "args": ["sft"]}
    assert pod_spec.container_argv(c, env, ep) == ["vlm-trainer", "sft"]
    with pytest.raises(pod_spec.PodConfigError, match="no command"):
        pod_spec.container_argv({"name": "m", "image": "busybox"}, env, ep)


def test_volumes_are_materialised(tmp_path: Path) -> None:
    api = FakeApi(cms={"cfg": {"data": {"config.yaml": "a: 1\n", "other": "x"}}})
    p = pod()
    cm = pod_spec.materialise_volume(
        {
            "name": "c",
            "configMap": {"name": "cfg", "items": [{"key": "config.yaml", "path": "sub/c.yaml"}]},
        },
        p,
        api,
        tmp_path,
    )
    assert (cm / "sub/c.yaml").read_text() == "a: 1\n" and not (cm / "other").exists()
    proj = pod_spec.materialise_volume(
        {
            "name": "kube-api-access",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token", "audience": "api"}},
                    {"configMap": {"name": "cfg", "items": [{"key": "other", "path": "ca.crt"}]}},
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ]
            },
        },
        p,
        api,
        tmp_path,
    )
    assert (proj / "token").read_text() == "token-for-job-1-abc-api"
    assert (proj / "ca.crt").read_text() == "x" and (proj / "namespace").read_text() == "ns1"
    with pytest.raises(pod_spec.PodConfigError, match="not bound"):
        pod_spec.materialise_volume(
            {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}, p, api, tmp_path
        )
    mounts = pod_spec.container_mounts(
        {
            "volumeMounts": [
                {"name": "c", "mountPath": "/etc/cfg", "readOnly": True},
                {"name": "c", "mountPath": "/x", "subPath": "sub"},
            ]
        },
        {"c": cm},
    )
    assert mounts[0] == pod_spec.Mount(str(cm), "/etc/cfg", True)
    assert mounts[1] == pod_spec.Mount(str(cm / "sub"), "/x", False)


def test_hosts_file_names_indexed_job_siblings() -> None:
    hosts = pod_spec.hosts_file(pod(hostname="train-1", subdomain="train"))
    names = hosts.split("\n")[0].split()
    assert "train-0.train" in names and "train-1.train.ns1.svc.cluster.local" in names
    assert names[0] == "127.0.0.1"


def _pod(pod_sc: dict[str, Any], container_sc: dict[str, Any]) -> tuple[dict, dict]:
    c = {"name": "m", "securityContext": container_sc}
    return {"metadata": {"name": "p"}, "spec": {"securityContext": pod_sc, "containers": [c]}}, c


def test_identity_container_wins_and_groups_include_fs_group() -> None:
    pod, c = _pod(
        {"runAsUser": 1, "runAsGroup": 2, "fsGroup": 3, "supplementalGroups": [4, 3]},
        {"runAsUser": 5, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
    )
    ident = pod_spec.container_identity(pod, c)
    assert (ident.uid, ident.gid, ident.groups) == (5, 2, (3, 4))
    assert ident.read_only_root and ident.no_new_privs
    plain = pod_spec.container_identity(*_pod({}, {}))
    assert (plain.uid, plain.gid, plain.groups, plain.read_only_root) == (0, 0, (), False)


@pytest.mark.parametrize(
    "pod_sc, container_sc, message",
    [
        ({"runAsNonRoot": True}, {}, "image will run as root"),
        ({}, {"runAsNonRoot": True, "runAsUser": 0}, "breaks non-root policy"),
    ],
)
def test_run_as_non_root_refuses_root(pod_sc: dict, container_sc: dict, message: str) -> None:
    with pytest.raises(pod_spec.PodConfigError, match=message):
        pod_spec.container_identity(*_pod(pod_sc, container_sc))


def test_volume_ownership_as_the_kubelet_sets_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "f").write_text("x")
    empty.chmod(0o755)
    pod_spec.set_volume_ownership({"emptyDir": {}}, empty, 4242)
    assert stat.S_IMODE(empty.stat().st_mode) & 0o777 == 0o777
    for p in (empty, empty / "sub", empty / "sub" / "f"):
        assert p.stat().st_gid == 4242
        assert p.stat().st_mode & stat.S_IWGRP
    assert (empty / "sub").stat().st_mode & stat.S_ISGID
    host = tmp_path / "host"
    host.mkdir()
    before = host.stat()
    pod_spec.set_volume_ownership({"hostPath": {"path": str(host)}}, host, 4242)
    assert (host.stat().st_gid, host.stat().st_mode) == (before.st_gid, before.st_mode)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "k").write_text("v")
    pod_spec.set_volume_ownership({"configMap": {"name": "c"}}, cfg, 4242)
    assert (cfg / "k").stat().st_gid == 4242
    assert not (cfg / "k").stat().st_mode & stat.S_IWGRP  # read-only volume types stay so
    assert os.access(cfg / "k", os.R_OK)

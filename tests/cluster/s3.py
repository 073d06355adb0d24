"""A real S3 server for the local stack and the tests: SeaweedFS's `weed server -s3` on loopback.

Supported: one server per call, master + volume + filer + S3 gateway in one process, every port
a free loopback port, data under `<workdir>/data`, one bucket and one access key (random per
start) given to the gateway through its `-s3.config` identities file. `S3Server.env` is what a
client needs (the standard `AWS_*` variables plus `VLM_S3_BUCKET`); `write_env` writes it as
`KEY=value` lines (`.devcluster/s3.env`). The binary comes from `hack/seaweedfs/build.sh`
(built once, cached by version) unless `VLM_WEED` names one. The process gets
PR_SET_PDEATHSIG like the control plane, so it never outlives whoever started it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.launcher import REPO, free_port, spawn, stop_process

BUILD_SCRIPT = REPO / "hack" / "seaweedfs" / "build.sh"
REGION = "us-east-1"
BUCKET = "vlm-trainer"


def find_weed() -> Path:
    """The cached `weed` binary, built on first use (several minutes)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "weed"


@dataclass
class S3Server:
    workdir: Path
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    proc: subprocess.Popen | None
    sockets: tuple[Path, ...] = ()  # where weed puts its gRPC sockets (fixed under /tmp)

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "VLM_S3_BUCKET": self.bucket,
        }

    def write_env(self, path: Path) -> Path:
        path.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        path.chmod(0o600)  # it holds a secret key
        return path

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        for sock in self.sockets:
            sock.unlink(missing_ok=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _identities(access_key: str, secret_key: str) -> dict:
    return {
        "identities": [
            {
                "name": "vlm-trainer",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def _grpc_sockets(argv: list[str]) -> tuple[Path, ...]:
    """weed serves each gRPC port also on `/tmp/seaweedfs-<service>-grpc-<port>.sock` (not
    configurable) and leaves the files behind: `stop` removes them."""
    flags = dict(a.lstrip("-").split("=", 1) for a in argv if a.startswith("-") and "=" in a)
    services = {"master": "master", "volume": "volume", "filer": "filer", "s3": "s3"}
    return tuple(
        Path(f"/tmp/seaweedfs-{name}-grpc-{flags[f'{flag}.port.grpc']}.sock")
        for flag, name in services.items()
    )


def _server_argv(weed: Path, workdir: Path, s3_port: int, config: Path) -> list[str]:
    # Every listener gets an explicit free port: the defaults (9333, 8080, 8888, 8333 and
    # port+10000 for gRPC) would collide between parallel servers or leave the port range.
    p = {k: free_port() for k in ("master", "mgrpc", "volume", "vgrpc", "filer", "fgrpc", "s3g")}
    return [
        str(weed),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir / 'data'}",
        f"-master.port={p['master']}",
        f"-master.port.grpc={p['mgrpc']}",
        "-master.volumeSizeLimitMB=256",  # small volumes: a test store, not a data lake
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={p['vgrpc']}",
        "-volume.max=32",
        "-filer",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={p['fgrpc']}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={p['s3g']}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",  # catalogs we do not use, on fixed default ports
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # a missing bucket is an error, as on real S3
        f"-s3.localSocket={workdir / 's3.sock'}",  # not stray files in /tmp
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-master.telemetry=false",
    ]


def start_s3(workdir: Path, weed: Path | None = None, timeout: float = 120) -> S3Server:
    """Start SeaweedFS with its S3 gateway; return once the bucket exists and accepts writes."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    access_key, secret_key = f"vlm{secrets.token_hex(8)}", secrets.token_hex(20)
    config = workdir / "s3-identities.json"
    config.write_text(json.dumps(_identities(access_key, secret_key)))
    config.chmod(0o600)
    s3_port = free_port()
    argv = _server_argv(weed or find_weed(), workdir, s3_port, config)
    proc = spawn(argv, workdir / "weed.log")
    endpoint = f"http://127.0.0.1:{s3_port}"
    sockets = _grpc_sockets(argv)
    server = S3Server(workdir, endpoint, access_key, secret_key, BUCKET, proc, sockets)
    try:
        _wait_bucket(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_bucket(server: S3Server, timeout: float) -> None:
    """Create the bucket once the gateway answers, then round-trip one object through it (the
    volume server registers with the master a moment after the gateway is up)."""
    import s3fs  # the trainer extra's client; imported here so the launcher needs it only for S3

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            tail = (server.workdir / "weed.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"weed exited with {server.proc.returncode}:\n{tail}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=2).close()
        except urllib.error.HTTPError:
            pass  # 403 without credentials: the gateway is listening
        except OSError as e:
            last = e
            time.sleep(0.3)
            continue
        try:
            fs = s3fs.S3FileSystem(
                key=server.access_key,
                secret=server.secret_key,
                client_kwargs={"endpoint_url": server.endpoint, "region_name": REGION},
                skip_instance_cache=True,
            )
            if not fs.exists(server.bucket):
                fs.mkdir(server.bucket)
            fs.pipe_file(f"{server.bucket}/.ready", b"ok")
            if fs.cat_file(f"{server.bucket}/.ready") == b"ok":
                fs.rm_file(f"{server.bucket}/.ready")
                return
        except Exception as e:  # not ready yet; the last error is reported on timeout
            last = e
        time.sleep(0.5)
    raise TimeoutError(
        f"S3 gateway {server.endpoint} not usable after {timeout}s ({last}); "
        f"log: {server.workdir / 'weed.log'}"
    )

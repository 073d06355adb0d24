"""Entry point run inside a private mount namespace (`unshare --mount`) for one container.

It bind-mounts each volume at its container path (so the process sees `/etc/vlm-trainer/...`
exactly as in a real pod), the termination-message file and /etc/hosts, then `exec`s the
container's argv in its working directory with its environment. Because `unshare` without
`--fork` and this script both exec in place, the container keeps the PID the runner started:
SIGTERM/SIGKILL from the runner reach it directly.

Argument: the path of a JSON file {"argv", "env", "cwd", "mounts": [{source,target,read_only}],
"keep": [host folders that play the image: project, virtualenv, Python],
"identity": pod_spec.Identity as a dict (uid, gid, groups, read_only_root, no_new_privs)}.

Order, as a container runtime does it: the image folders are made reachable (a tmpfs of mode 755
over their first ancestor that others may not search, e.g. /root, with only them bound back),
the volumes are bound, the working directory is created, then with `read_only_root` every other
mount is remounted read-only (per mount point, in this namespace only: the host keeps its
flags); /dev, /proc and /sys stay as they are, the container's writable volumes and its
termination-message file stay writable. Last the process drops to its uid, gid and
supplementary groups (and sets no_new_privs) and execs.
Assumes root (mount namespaces); missing mount points are created on the host's filesystem as
empty folders/files, which is harmless outside the namespace.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
#: Per-mount flags a read-only remount must keep (mountinfo option -> MS_* bit).
_KEEP_FLAGS = {
    "nosuid": 2,
    "nodev": 4,
    "noexec": 8,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
}
#: Kernel and device filesystems a runtime mounts writable in every container.
_LEAVE = ("/dev", "/proc", "/sys")
PR_SET_NO_NEW_PRIVS = 38


def _bind(fd: int, is_dir: bool, target: str, read_only: bool) -> None:
    t = Path(target)
    if is_dir:
        t.mkdir(parents=True, exist_ok=True)
    else:
        t.parent.mkdir(parents=True, exist_ok=True)
        if not t.exists():
            t.touch()
    # The source is named through an fd opened before any mount: a volume mounted at /tmp
    # would otherwise hide sources that live under /tmp (the runner's state folder often does).
    # --no-canonicalize: mount(8) would otherwise turn the fd link back into a path string,
    # which resolves to whatever is mounted there now.
    src = f"/proc/self/fd/{fd}"
    argv = ["mount", "--no-canonicalize", "--bind", src, target]
    subprocess.run(argv, check=True, pass_fds=(fd,))
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)


def _mount_points() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of this namespace, from /proc/self/mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")  # \040 and friends
        out.append((point, set(fields[5].split(","))))
    return out


def _remount_read_only(point: str, options: set[str]) -> None:
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    flags |= sum(bit for opt, bit in _KEEP_FLAGS.items() if opt in options)
    if _libc.mount(b"none", point.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        # A host mount under a folder that a volume now covers (an emptyDir at /tmp hides the
        # host's /tmp/...) cannot be reached from the container: nothing to protect there.
        if err in (errno.ENOENT, errno.EINVAL):
            return
        raise OSError(err, f"remount {point} read-only: {os.strerror(err)}")


def _read_only_root(writable: set[str]) -> None:
    for point, options in _mount_points():
        if point in writable or any(point == d or point.startswith(d + "/") for d in _LEAVE):
            continue
        if "ro" not in options:
            _remount_read_only(point, options)


def _hidden_ancestor(path: str) -> str | None:
    """The first folder above `path` that others may not search (None: all may)."""
    parts = Path(path).parts
    for i in range(2, len(parts)):
        folder = str(Path(*parts[:i]))
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


def _expose_image(keep: list[tuple[int, str]]) -> None:
    """Make the image folders reachable by any user, hiding the rest of their hidden parents."""
    tops = [(fd, path, _hidden_ancestor(path)) for fd, path in keep]  # all before any mount
    for top in dict.fromkeys(t for _, _, t in tops if t):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", top], check=True)
    for fd, path, top in tops:
        if top:
            Path(path).mkdir(parents=True, exist_ok=True)  # in the tmpfs, mode 755 folders
            _bind(fd, True, path, True)


def _become(identity: dict) -> None:
    if identity.get("no_new_privs"):
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.setgroups(identity["groups"])
    os.setgid(identity["gid"])
    os.setuid(identity["uid"])


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    # Mounts made in this namespace must not leak to the host (some hosts default to shared).
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    opened = [
        (os.open(m["source"], os.O_PATH), Path(m["source"]).is_dir(), m) for m in spec["mounts"]
    ]
    # The host folders that stand in for the image (the project, its virtualenv, Python): a
    # volume mounted over one of their parents (an emptyDir at /tmp, say) must not hide them.
    keep = [(os.open(k, os.O_PATH), k) for k in spec.get("keep", []) if Path(k).is_dir()]
    _expose_image(keep)
    for fd, is_dir, m in opened:
        _bind(fd, is_dir, m["target"], m["read_only"])
        os.close(fd)
    targets = [m["target"].rstrip("/") + "/" for m in spec["mounts"]]
    for fd, path in keep:
        if any(path.startswith(t) for t in targets):
            _bind(fd, True, path, True)
        os.close(fd)
    cwd = spec.get("cwd") or "/"
    Path(cwd).mkdir(parents=True, exist_ok=True)
    identity = spec.get("identity") or {}
    if identity.get("read_only_root"):
        _read_only_root(
            {m["target"].rstrip("/") or "/" for m in spec["mounts"] if not m["read_only"]}
        )
    if identity:
        _become(identity)
    try:
        os.chdir(cwd)
    except OSError as e:  # the runtime's "chdir to cwd ... permission denied"
        print(f"chdir {cwd!r}: {e}", file=sys.stderr)
        sys.exit(128)
    try:
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as e:  # what a runtime reports as "executable file not found"
        print(f"exec {spec['argv'][0]!r}: {e}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()

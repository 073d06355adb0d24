"""Entry point run inside a private mount namespace (`unshare --mount`) for one container.

It bind-mounts each volume at its container path (so the process sees `/etc/vlm-trainer/...`
exactly as in a real pod), the termination-message file and /etc/hosts, then `exec`s the
container's argv in its working directory with its environment. Because `unshare` without
`--fork` and this script both exec in place, the container keeps the PID the runner started:
SIGTERM/SIGKILL from the runner reach it directly.

Argument: the path of a JSON file {"argv", "env", "cwd", "mounts": [{source,target,read_only}],
"keep": [host folders that must stay visible]}.
Assumes root (mount namespaces); missing mount points are created on the host's filesystem as
empty folders/files, which is harmless outside the namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


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
    os.chdir(cwd)
    try:
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as e:  # what a runtime reports as "executable file not found"
        print(f"exec {spec['argv'][0]!r}: {e}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Creates the project's virtualenv once and links it to .venv.
#
# The venv lives under $VLM_CACHE (default ~/.cache/vlm-trainer-operator/venv), outside the repo,
# so a fresh clone (CI) reuses the multi-GB torch install instead of unpacking it again. A stamp
# holds a hash of the declared dependencies: when they change, pip updates the venv in place.
# The editable install is re-pointed at this checkout when the clone moved (seconds).
set -euo pipefail
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${VLM_CACHE:-$HOME/.cache/vlm-trainer-operator}"
py="${PYTHON:-python3}"
venv="$cache/venv"
deps_hash=$("$py" - "$top/pyproject.toml" <<'PY'
import hashlib, json, sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
blob = json.dumps([p.get("dependencies"), p.get("optional-dependencies"), sys.version], sort_keys=True)
print(hashlib.sha256(blob.encode()).hexdigest()[:16])
PY
)
if [ ! -x "$venv/bin/python" ]; then
  echo "[venv] creating $venv (first time: downloads torch, several minutes)" >&2
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip setuptools wheel
fi
if [ "$(cat "$venv/.deps-hash" 2>/dev/null)" != "$deps_hash" ]; then
  echo "[venv] installing dependencies into $venv" >&2
  "$venv/bin/pip" install --quiet -e "$top[trainer,operator,dev,plot]"
  echo "$deps_hash" > "$venv/.deps-hash"
fi
if ! "$venv/bin/python" - "$top" <<'PY' 2>/dev/null
import sys, vlm_trainer
sys.exit(0 if vlm_trainer.__file__.startswith(sys.argv[1] + "/") else 1)
PY
then
  "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$top"
fi
ln -sfn "$venv" "$top/.venv"

#!/usr/bin/env bash
# Creates the project's virtualenv once and links it to .venv.
#
# The venv lives under $VLM_CACHE keyed by a hash of pyproject.toml, so a fresh clone (CI) reuses
# the multi-GB torch install instead of unpacking it again; only the editable install of this
# checkout is redone, which takes seconds.
set -euo pipefail
top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${VLM_CACHE:-$HOME/.cache/vlm-trainer-operator}"
py="${PYTHON:-python3}"
key=$( (cat "$top/pyproject.toml"; "$py" --version) | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "[venv] creating $venv (first time: downloads torch, several minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -e "$top[trainer,operator,dev]"
  touch "$venv/.complete"
fi
# Re-point the editable install at this checkout (cheap; needed when the clone moved).
if ! "$venv/bin/python" -c "import vlm_trainer, sys; sys.exit(0 if vlm_trainer.__file__.startswith('$top/') else 1)" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$top"
fi
ln -sfn "$venv" "$top/.venv"

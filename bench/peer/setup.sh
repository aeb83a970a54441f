#!/usr/bin/env bash
# Creates bench/peer/.venv and installs the peer's pinned requirements into it.
# Idempotent: a second run does nothing unless requirements.txt changed since the last install
# (its hash is kept in the venv), so bench/run can call it every time at no cost.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

# Quiet pip: its progress bars would drown the benchmark's own output.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
# Written last, so an interrupted install is retried next time.
printf '%s\n' "$want" >"$stamp"
echo "peer: requirements installed into $venv" >&2

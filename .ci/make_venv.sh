#!/usr/bin/env bash
# Creates the project's virtual environment with a Python found on this machine: 3.12 when
# there is one (the version the tests run on), else a newer 3.x. TorchGeo 0.10 needs 3.12 or
# newer, as pyproject.toml's requires-python says.
set -euo pipefail
venv=${1:-.venv}
find_python() {
    local candidates=(python3.12)
    if command -v pyenv >/dev/null 2>&1; then
        candidates+=("$(pyenv root)/versions/3.12.1/bin/python")
        for p in "$(pyenv root)"/versions/3.12.*/bin/python; do candidates+=("$p"); done
    fi
    candidates+=(/usr/bin/python3.12 /usr/local/bin/python3.12)
    candidates+=(python3.13 python3.14 python3)
    for py in "${candidates[@]}"; do
        if "$py" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' >/dev/null 2>&1; then
            echo "$py"; return 0
        fi
    done
    return 1
}
if ! py=$(find_python); then
    echo "glcgeo: no Python 3.12 or newer found (tried python3.12, pyenv versions 3.12.*," \
         "python3.13, python3.14, python3); install Python 3.12 (TorchGeo 0.10 needs 3.12" \
         "or newer) and run again" >&2
    exit 1
fi
echo "glcgeo: creating $venv with $py ($("$py" --version))"
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[dev]'
echo "glcgeo: environment ready in $venv"

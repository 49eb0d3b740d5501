#!/usr/bin/env bash
# What the `kinema serve` tests need on a fresh Debian machine (run as root by `make test` / .ci/run):
#   - Debian's PostgreSQL server binaries (the tests start a throwaway cluster of their own, on 127.0.0.1),
#   - Debian's Chromium (driven headless by Playwright; `playwright install` is never used),
#   - the Python packages of the server and its tests.
# Safe to run again: it installs only what is missing. Outside root it only reports what is missing.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
PY_PACKAGES=(starlette uvicorn python-multipart "psycopg[binary]" openai playwright)

missing_apt=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || missing_apt+=(postgresql)
[ -x /usr/bin/chromium ] || missing_apt+=(chromium chromium-driver)

if [ ${#missing_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
        echo "ci-services: installing ${missing_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_apt[@]}" > /dev/null
        # Debian starts a cluster of its own on install; the tests use their own, so stop it where it runs.
        if command -v pg_ctlcluster > /dev/null; then
            for conf in /etc/postgresql/*/main; do
                [ -d "$conf" ] || continue
                version=$(basename "$(dirname "$conf")")
                pg_ctlcluster "$version" main stop 2> /dev/null || true
            done
        fi
    else
        echo "ci-services: missing ${missing_apt[*]} (install them as root: apt-get install ${missing_apt[*]})" >&2
    fi
fi

if ! "$PYTHON" -c "import starlette, uvicorn, python_multipart, psycopg, openai, playwright" 2> /dev/null; then
    echo "ci-services: installing ${PY_PACKAGES[*]}"
    "$PYTHON" -m pip install -q "${PY_PACKAGES[@]}"
fi

echo "ci-services: postgresql $(ls /usr/lib/postgresql 2> /dev/null | tr '\n' ' ')| chromium $([ -x /usr/bin/chromium ] && echo ok || echo missing)"

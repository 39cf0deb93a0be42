#!/usr/bin/env bash
# Sets up (or brings up to date) the virtualenv .venv with the service and its test tools.
# Safe to run again. As root on Debian it installs redis-server when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing redis-server (Debian package)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "setup: redis-server is missing; install it (Debian/Ubuntu: sudo apt-get install redis-server)" >&2
        exit 1
    fi
fi

# promtool (Debian's prometheus package) lets the tests check the alert rules; optional.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
        || echo "setup: promtool not installed; the alert rules get a structural check only" >&2
fi

# Chromium (Debian's package) lets the viewer's browser tests run: Playwright drives /usr/bin/chromium
# and never downloads a browser of its own. Without it those tests are skipped and say why.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium (Debian package) for the viewer's browser tests" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
    else
        echo "setup: /usr/bin/chromium is missing; the viewer's browser tests will be skipped" \
            "(Debian/Ubuntu: sudo apt-get install chromium)" >&2
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The embedding model's ONNX export, once per machine (into the user's cache, shared by every
# checkout; made from the installed package, nothing downloaded): no later process start pays for it.
.venv/bin/python -c "from app.catalog.embedding import ensure_onnx_export; from app.core.settings import Settings; print(ensure_onnx_export(Settings().model_cache_dir))"

#!/bin/sh
# Installs one podiam component, from a built podiam wheel, into a fresh
# virtual environment with nothing else in it (no pip, no setuptools):
#
#   scripts/install-image-venv.sh proxy|operator WHEEL_DIR VENV
#
# The images' build stage runs exactly this (Dockerfile.proxy,
# Dockerfile.operator), and so does tests/chart/test_images.py, so what the
# test checks is what the image gets: the proxy venv holds the proxy extra's
# dependencies only (no kopf, no aiobotocore).
set -eu
if [ "$#" -ne 3 ]; then
    echo "usage: $0 proxy|operator WHEEL_DIR VENV" >&2
    exit 2
fi
component=$1 wheels=$2 venv=$3
case "$component" in
    proxy|operator) ;;
    *) echo "$0: unknown component '$component' (proxy or operator)" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
set -- "$wheels"/podiam-*.whl
if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "$0: expected exactly one podiam-*.whl in $wheels" >&2
    exit 2
fi
wheel=$1

"$python" -m venv --without-pip "$venv"
# The installer's own pip drives the venv's interpreter (pip >= 22.3), so the
# venv needs no pip of its own. The wheel is named by path: pip never looks
# up "podiam" on an index.
"$python" -m pip --python "$venv/bin/python" install \
    --no-input --disable-pip-version-check --no-warn-script-location \
    "$wheel[$component]"
# Smoke test: the entry point starts and parses its flags.
"$venv/bin/podiam-$component" --help >/dev/null

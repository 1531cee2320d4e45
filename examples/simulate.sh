#!/usr/bin/env bash
# See kTAMV align a simulated multi-tool printer, through real Klippy, on any
# Debian-like machine: sets up what is missing (Debian packages, the helper's
# venv .venv and Klippy's venv .venv-klippy, under the repository), then runs
# the alignment. Options go to examples/simulate.py:
#   bash examples/simulate.sh [--tools N] [--seed S] [--backlash MM] [--help]
set -euo pipefail
cd "$(dirname "$0")/.."
bash test/setup.sh --simulation
exec .venv/bin/python examples/simulate.py "$@"

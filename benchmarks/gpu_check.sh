#!/usr/bin/env bash
# The GPU check: bash benchmarks/gpu_check.sh [--smoke] [--out DIR] [--official_src DIR] [--budget S] [--only STEPS]
# Runs benchmarks/gpu_check.py with $PYTHON (default python3); see that file for the steps and the outputs
# (summary.json, summary.md, gpu_check.log and logs.tar.gz in --out, default output/gpu_check).
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 for bad flags.
exec "${PYTHON:-python3}" -u "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"

#!/usr/bin/env bash
# Prepare, in git-ignored folders of this checkout, what the GPU machine lacks for benchmarks/gpu_check.sh:
#   .whl/                 wheels of the requirements its python3 does not have (bicubic-pytorch, pypng)
#   .official/LCoAN/src/  the official LCoAN code, the benchmarks' same-run baseline (never committed)
# Both names go into .git/info/exclude, so the device run can carry them.
#
# usage: bash benchmarks/gpu_prepare.sh [OFFICIAL_SRC]    (a checkout of YigangZhao/LCoAN's src/ folder)
#        PYTHON=... picks the interpreter whose pip downloads the wheels (default .venv/bin/python, else python3)
#
# Then run on the device, carrying .whl and .official:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site && bash benchmarks/gpu_check.sh --out $OUT --official_src .official/LCoAN/src
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
official="${1:-}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# The GPU machine's python3 is CPython 3.12 on x86-64 with torch 2.11 and every other package of
# requirements.txt; these two travel as wheels, in the versions requirements.txt asks for.
mapfile -t wanted < <(grep -iE '^(bicubic-pytorch|pypng)[=<>~! ]' requirements.txt)
if [ "${#wanted[@]}" -ne 2 ]; then
  echo "error: requirements.txt should name bicubic-pytorch and pypng (found: ${wanted[*]:-none})" >&2
  exit 2
fi

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for entry in /.whl/ /.official/; do
  grep -qxF "$entry" "$exclude" || echo "$entry" >> "$exclude"
done

rm -rf .whl
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${wanted[@]}"

carry='".whl"'
if [ -n "$official" ]; then
  if [ ! -f "$official/model/lcoan.py" ]; then
    echo "error: $official/model/lcoan.py not found (give the official checkout's src/ folder)" >&2
    exit 2
  fi
  rm -rf .official
  mkdir -p .official/LCoAN
  cp -r "$official" .official/LCoAN/src
  find .official -name __pycache__ -type d -prune -exec rm -rf {} +
  carry='".whl", ".official"'
fi

for path in .whl .official; do
  if [ -e "$path" ] && ! git check-ignore -q "$path"; then
    echo "error: $path is not ignored by git: it would not travel as a carried path" >&2
    exit 1
  fi
done
ls -1 .whl
du -sh .whl ${official:+.official}
echo "carry: [$carry]"

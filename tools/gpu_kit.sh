#!/usr/bin/env bash
# GPU check kit: for a GPU machine at hand for a few minutes, without network, whose Python (3.12) has torch,
# lightning, peft, transformers and einops but not hydra-core, omegaconf, deepspeed, webdataset or decord.
#
#   tools/gpu_kit.sh prepare DIR     # here (package registry access): DIR/wheels (<= 60 MB) + DIR/scail_lab (git HEAD)
#   DIR/scail_lab/tools/gpu_kit.sh run OUT   # there: offline install (--no-deps), then in under 8 minutes
#                                            # pytest -m gpu and tools/gpu_check.py; one summary in OUT/summary.md
#
# W&B is not in the kit (its dependency tree is large); the kit's runs log nothing to it (WANDB_MODE=disabled).
# Environment: KIT_PYTHON_VERSION (default 3.12), KIT_PLATFORM (default manylinux x86_64), KIT_MAX_MB (default 60);
# KIT_DEVICE=cpu makes `run` a dry run of the whole kit on a CPU machine (gpu tests skip, checks at tiny sizes).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# pinned to what scail_lab is tested with (pip list of the CI environment)
BINARY=(hydra-core==1.3.8 omegaconf==2.3.1 webdataset==1.0.2 braceexpand==0.1.7 decord==0.6.0 hjson==3.1.0
        py-cpuinfo==9.0.0 ninja==1.13.2 msgpack==1.2.4 nvidia-ml-py ftfy wcwidth)
SOURCE=(antlr4-python3-runtime==4.9.3 deepspeed==0.19.8)  # no wheels published: pure-Python / JIT-built ops

usage() { echo "usage: $0 prepare DIR | run OUT" >&2; exit 2; }

prepare() {
  local dir="$1" py="${KIT_PYTHON_VERSION:-3.12}" max="${KIT_MAX_MB:-60}"
  [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ] && { echo "prepare: $dir exists and is not empty" >&2; exit 1; }
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/wheels" "$tmp/scail_lab"
  local platforms=()
  for p in ${KIT_PLATFORM:-manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 manylinux2010_x86_64 any}; do
    platforms+=(--platform "$p")
  done
  pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}" \
    -d "$tmp/wheels" "${BINARY[@]}"
  pip download -q --no-deps --no-binary=:all: -d "$tmp/wheels" "${SOURCE[@]}"
  git -C "$repo" archive HEAD | tar -x -C "$tmp/scail_lab"
  local mb
  mb=$(du -sm "$tmp/wheels" | cut -f1)
  if [ "$mb" -gt "$max" ]; then
    echo "prepare: the wheels take ${mb} MB, more than ${max} MB" >&2; rm -rf "$tmp"; exit 1
  fi
  (cd "$tmp/wheels" && sha256sum ./* > SHA256SUMS)
  rm -rf "$dir"; mv "$tmp" "$dir"
  echo "kit ready: $dir (wheels ${mb} MB, source $(git -C "$repo" rev-parse --short HEAD)); on the GPU machine:"
  echo "  bash $dir/scail_lab/tools/gpu_kit.sh run OUT"
}

run() {
  local out="$1" wheels="$repo/../wheels" start=$SECONDS
  [ -d "$wheels" ] || { echo "run: no wheels at $wheels (run this script from a prepared kit)" >&2; exit 1; }
  mkdir -p "$out"
  (cd "$wheels" && sha256sum -c --quiet SHA256SUMS) || { echo "run: a wheel's checksum differs" >&2; exit 1; }
  python -m pip install -q --no-index --no-deps "$wheels"/*.whl
  python -m pip install -q --no-index --no-deps --no-build-isolation "$wheels"/*.tar.gz
  python -m pip install -q --no-index --no-deps --no-build-isolation -e "$repo"
  export WANDB_MODE=disabled
  cd "$repo"
  local status=0
  timeout 240 python -m pytest -q -m gpu tests/test_gpu.py > "$out/pytest_gpu.txt" 2>&1 || status=1
  local device=(--device cuda)
  [ "${KIT_DEVICE:-cuda}" = cpu ] && device=(--device cpu --tiny)
  timeout 300 python tools/gpu_check.py --out "$out/checks" "${device[@]}" > "$out/checks.txt" 2>&1 || status=1
  {
    echo "# scail_lab GPU kit ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo source), $((SECONDS - start)) s)"
    echo; echo '## pytest -m gpu'; echo; tail -n 15 "$out/pytest_gpu.txt"
    echo; cat "$out/checks/summary.md" 2>/dev/null || { echo '## gpu_check failed'; tail -n 30 "$out/checks.txt"; }
  } > "$out/summary.md"
  cat "$out/summary.md"
  return $status
}

case "${1:-}" in
  prepare) [ $# -eq 2 ] || usage; prepare "$2" ;;
  run) [ $# -eq 2 ] || usage; run "$2" ;;
  *) usage ;;
esac

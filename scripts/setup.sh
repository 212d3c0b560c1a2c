#!/usr/bin/env bash
# Installs everything gaussedge needs on a fresh Debian machine, idempotently.
# Big downloads go to a cache outside the clone ($GAUSSEDGE_CACHE, default
# ~/.cache/gaussedge) and are reused by later clones and CI runs.
#
#   scripts/setup.sh            apt packages, Fashion-MNIST, libtorch
#   scripts/setup.sh --no-torch skip libtorch (shared and device only)
#   scripts/setup.sh --cuda     also the CUDA libraries libtorch_cuda.so
#                               links (cuBLAS, cuDNN, NCCL, ...; about 3 GB),
#                               for `cargo build --release -p gaussedge-host
#                               --features cuda` on a machine with an NVIDIA
#                               GPU and driver
#
# Prints the environment to use, as shell assignments, on its last lines;
# scripts/env.sh sources them.
set -euo pipefail

CACHE="${GAUSSEDGE_CACHE:-$HOME/.cache/gaussedge}"
TORCH_VERSION=2.11.0
# The CPU runtime pieces libtorch_cpu.so links against, from the same CUDA
# release the CUDA machines carry (cu130); no full CUDA toolkit is needed.
TORCH_EXTRA=(nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
want_torch=1
want_cuda=0
for arg in "$@"; do
  case "$arg" in
    --no-torch) want_torch=0 ;;
    --cuda) want_cuda=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

apt_packages=(dataset-fashion-mnist python3-venv pkg-config fonts-dejavu-core)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The fleet tests start their own MQTT broker on a loopback port: Debian's
# Mosquitto, the reference broker. Without it they say so and skip.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  log "apt-get install mosquitto (the fleet tests' broker)"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null; } \
    || log "mosquitto could not be installed here: the fleet's broker tests will be skipped"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi

mkdir -p "$CACHE"
TORCH_VENV="$CACHE/torch-$TORCH_VERSION"
if [ "$want_torch" = 1 ]; then
  if [ ! -f "$TORCH_VENV/.complete" ]; then
    log "installing libtorch $TORCH_VERSION (pip wheel, about 1.3 GB) into $TORCH_VENV"
    rm -rf "$TORCH_VENV"
    python3 -m venv "$TORCH_VENV"
    "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
      "torch==$TORCH_VERSION" "${TORCH_EXTRA[@]}"
    touch "$TORCH_VENV/.complete"
  fi
  if [ "$want_cuda" = 1 ] && [ ! -f "$TORCH_VENV/.cuda-complete" ]; then
    # The set torch's own wheel declares (its Requires-Dist: the cu13
    # toolkit pieces, cuDNN, cuSPARSELt, NCCL, NVSHMEM), so it always
    # matches the libtorch above. They unpack into site-packages/nvidia/,
    # where libtorch_cuda.so's RPATH ($ORIGIN/../../nvidia/...) finds them:
    # the gaussedge binary needs no LD_LIBRARY_PATH.
    mapfile -t cuda_reqs < <("$TORCH_VENV/bin/python" - <<'PY'
import importlib.metadata as m
for r in m.requires("torch") or []:
    spec, _, marker = r.partition(";")
    if spec.strip().startswith(("cuda-toolkit", "nvidia-")) and "extra" not in marker:
        print(spec.strip())
PY
)
    if [ "${#cuda_reqs[@]}" -eq 0 ]; then
      echo "setup.sh: torch $TORCH_VERSION declares no CUDA libraries; nothing to install for --cuda" >&2
      exit 1
    fi
    log "installing the CUDA libraries libtorch_cuda.so links (about 3 GB): ${cuda_reqs[*]}"
    "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check "${cuda_reqs[@]}"
    touch "$TORCH_VENV/.cuda-complete"
  fi
  site=$("$TORCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "export LIBTORCH=$site/torch"
fi
echo "export GAUSSEDGE_CACHE=$CACHE"

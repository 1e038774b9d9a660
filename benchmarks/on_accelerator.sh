#!/usr/bin/env bash
# The benchmarks that matter on an accelerator, with their torch peers on the same device, in
# one go (≤ 10 minutes: every command has its own time limit, 555 s in all). Results go to $OUT,
# one file per benchmark, plus machine.txt (date, GPU, versions).
#
#   OUT=some/folder bash benchmarks/on_accelerator.sh          # on the lent GPU machine
#   QUICK=1 OUT=/tmp/acc bash benchmarks/on_accelerator.sh     # dry run: tiny settings, any CPU
#   ONLY="spiral cde" OUT=... bash benchmarks/on_accelerator.sh  # some of them (names below)
#
# The GPU machine has jax, diffrax, equinox, optax, torch and torchdiffeq but no network: the
# other peers (torchsde, torchcde, torchode, torchdyn and their small pure-Python dependencies)
# are installed with `pip install --no-deps` from the wheels in $WHEELS when they are missing
# (fill it here with `pip download --no-deps -d benchmarks/out/wheels torchsde torchcde
# trampoline torchode torchtyping "typeguard<3" torchdyn pytorch-lightning torchmetrics
# lightning-utilities`, and carry that folder). A peer that still cannot be imported is
# reported, and its benchmark runs without it where the script allows that.
#
# Torch runs on the GPU when torch.cuda.is_available() (TORCH_DEVICE=cpu|cuda overrides): the
# benchmarks are run through a small wrapper that sets torch's default device, so their torch
# tensors and modules are created there; jax uses its default device (the GPU).
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# jax and torch share the GPU in one process: jax preallocates this fraction, torch the rest
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
OUT=${OUT:-benchmarks/out/accelerator}
WHEELS=${WHEELS:-benchmarks/out/wheels}
QUICK=${QUICK:-0}
mkdir -p "$OUT"

if [ -d "$WHEELS" ]; then
  for module in trampoline:trampoline typeguard:typeguard torchsde:torchsde torchcde:torchcde \
    torchtyping:torchtyping torchode:torchode lightning_utilities:lightning-utilities \
    torchmetrics:torchmetrics pytorch_lightning:pytorch-lightning torchdyn:torchdyn; do
    name=${module%%:*} dist=${module##*:}
    python3 -c "import $name" 2>/dev/null ||
      python3 -m pip install -q --no-deps --no-index --find-links "$WHEELS" "$dist" 2>&1 | tail -1
  done
fi

TORCH_DEVICE=${TORCH_DEVICE:-$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo none)}
{
  date -u
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import jax, diffrax, equinox; print('jax', jax.__version__, 'diffrax', diffrax.__version__, 'equinox', equinox.__version__, jax.devices())"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda available', torch.cuda.is_available())" || true
  echo "torch peers on: $TORCH_DEVICE"
  for m in torchdiffeq torchsde torchcde torchode torchdyn; do
    python3 -c "import $m; print('$m', getattr($m, '__version__', '?'))" 2>/dev/null || echo "$m: not importable"
  done
} 2>&1 | tee "$OUT/machine.txt"

# python3 with torch's default device set first (then the script runs as __main__, its folder
# first on sys.path); an array, not a function, so that `timeout` can run it
WRAP='
import os, runpy, sys
device = sys.argv[1]
if device not in ("cpu", "none"):
    import torch
    torch.set_default_device(device)
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python script.py` does
runpy.run_path(sys.argv[0], run_name="__main__")
'
ON_DEVICE=(python3 -c "$WRAP" "$TORCH_DEVICE")

# bench NAME LIMIT_S COMMAND...: run with a time limit, keep the output in $OUT/NAME.txt
bench() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local shown=() arg
  for arg in "$@"; do
    if [ "$arg" = "$WRAP" ]; then shown+=("<set torch's default device>"); else shown+=("$arg"); fi
  done
  echo "== $name (limit ${limit}s): ${shown[*]}"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  tail -6 "$OUT/$name.txt"
  echo "   exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
}

if [ "$QUICK" = 1 ]; then  # the same commands with tiny settings: checks that each one runs
  bench spiral 300 "${ON_DEVICE[@]}" benchmarks/spiral.py --steps 2 --repeats 1 --only default torchdiffeq
  bench ffjord-1024 400 "${ON_DEVICE[@]}" benchmarks/ffjord.py speed --batch 64 --repeats 1 --out "$OUT/ffjord"
  bench cde 300 "${ON_DEVICE[@]}" benchmarks/cde.py --steps 2 --repeats 1 --torch-steps 1 --batch 8 --series 16
  bench latent-sde 400 "${ON_DEVICE[@]}" benchmarks/latent_sde.py --batch 8 --steps 1 --repeats 1 --torch-steps 1 --torch-repeats 1 --no-fit
  bench batched 400 "${ON_DEVICE[@]}" benchmarks/batched.py --quick --out "$OUT/batched.json"
  bench scaling-ffjord 300 python3 benchmarks/scaling.py --problem ffjord --steps 2 --devices 1 --results "$OUT/scaling-ffjord.md"
  bench scaling-trajectory 300 python3 benchmarks/scaling.py --steps 2 --devices 1 --results "$OUT/scaling-trajectory.md"
else
  bench spiral 90 "${ON_DEVICE[@]}" benchmarks/spiral.py --steps 100 --repeats 3 --only default Backsolve torchdiffeq
  bench ffjord-1024 110 "${ON_DEVICE[@]}" benchmarks/ffjord.py speed --batch 1024 --repeats 3 --out "$OUT/ffjord"
  bench cde 70 "${ON_DEVICE[@]}" benchmarks/cde.py --steps 10 --repeats 3 --torch-steps 3
  bench latent-sde 90 "${ON_DEVICE[@]}" benchmarks/latent_sde.py --batch 128 --steps 5 --repeats 3 --torch-steps 2 --torch-repeats 3
  bench batched 90 "${ON_DEVICE[@]}" benchmarks/batched.py --repeats 2 --torch-repeats 1 --out "$OUT/batched.json"
  bench scaling-ffjord 60 python3 benchmarks/scaling.py --problem ffjord --steps 10 --devices 1 --results "$OUT/scaling-ffjord.md"
  bench scaling-trajectory 45 python3 benchmarks/scaling.py --steps 30 --devices 1 --results "$OUT/scaling-trajectory.md"
fi
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"

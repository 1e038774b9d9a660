#!/usr/bin/env bash
# The benchmarks that matter on an accelerator, in one go (the lent GPU machine has jax, diffrax,
# equinox, optax and torchdiffeq preinstalled; this repository is used from source).
#   OUT=some/folder bash benchmarks/on_accelerator.sh
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out/accelerator}
mkdir -p "$OUT"
{ date -u; nvidia-smi -L; python3 -c "import jax, diffrax, equinox; print('jax', jax.__version__, 'diffrax', diffrax.__version__, 'equinox', equinox.__version__, jax.devices())"; } 2>&1 | tee "$OUT/machine.txt"
timeout 100 python3 benchmarks/scaling.py --problem ffjord --steps 10 --devices 1 --results "$OUT/scaling-ffjord.md" 2>&1 | tail -4
timeout 70 python3 benchmarks/scaling.py --steps 30 --devices 1 --results "$OUT/scaling-trajectory.md" 2>&1 | tail -4
timeout 90 python3 benchmarks/spiral.py --steps 100 --repeats 3 2>&1 | tee "$OUT/spiral.txt" | tail -15
timeout 90 python3 benchmarks/ffjord.py speed --repeats 3 --out "$OUT/ffjord" 2>&1 | tee "$OUT/ffjord-speed.txt" | tail -12

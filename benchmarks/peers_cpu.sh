#!/usr/bin/env bash
# Issue #31's tables on this CPU in one run: every row where a torch peer is closest, ours and
# the peer side by side in one process per benchmark. Run it on an idle machine, recorded:
#
#   python benchmarks/record.py peers-cpu -- bash benchmarks/peers_cpu.sh
#
# About 20 minutes on 2 cores. `--threads 1` rows put both sides on one thread (the fair pair;
# torch's step on small batches is fastest single-threaded); the latent SDE also runs with each
# library's default threads. ONLY="latent-sde ffjord" runs some of them (names below).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

run() {  # run NAME COMMAND...: the command's output lines matching $KEEP (default: its last
  local name=$1 # $TAIL lines, default 14) under a heading
  shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "== $name: $*"
  local start=$SECONDS
  if [ -n "${KEEP:-}" ]; then
    "$@" 2>&1 | grep -E "$KEEP"
  else
    "$@" 2>&1 | grep -v "^WARNING" | tail -"${TAIL:-14}"
  fi
  echo "   ($((SECONDS - start)) s, load $(cut -d' ' -f1-3 /proc/loadavg))"
}

run spiral python benchmarks/spiral.py --steps 100 --repeats 3
run cde python benchmarks/cde.py --steps 10 --repeats 3 --torch-steps 3
run latent-sde-64 python benchmarks/latent_sde.py --batch 64 --steps 3 --repeats 5 \
  --torch-steps 1 --torch-repeats 5 --threads 1 --no-fit
run latent-sde-128 python benchmarks/latent_sde.py --batch 128 --steps 3 --repeats 5 \
  --torch-steps 1 --torch-repeats 5 --threads 1 --no-fit
run latent-sde-64-default-threads python benchmarks/latent_sde.py --batch 64 --steps 3 \
  --repeats 5 --torch-steps 1 --torch-repeats 5 --no-fit
run latent-sde-128-default-threads python benchmarks/latent_sde.py --batch 128 --steps 3 \
  --repeats 5 --torch-steps 1 --torch-repeats 5 --no-fit
run neural-sde python benchmarks/sde.py --steps 20 --repeats 5 --torch-steps 2 --torch-repeats 3 \
  --threads 1
KEEP='^\{"impl"' run ffjord python benchmarks/ffjord.py speed --repeats 7 --threads 1 \
  --out benchmarks/out/peers_cpu
TAIL=200 run batched python benchmarks/batched.py --repeats 3 --torch-repeats 2
run cli-first-fit python benchmarks/startup.py --only cli --repeats 1

#!/bin/bash
# Whole-run overhead on a second CPU (Intel Xeon with AMX-BF16 and AVX512-BF16, 2 cores; `lscpu`),
# one run at a time, nothing else running (issue 18, 2026-12-05, second session). Same commands as
# ../2026-12-05/overhead.sh; runs written to /tmp and copied here without model files.
cd /work/main && source .venv/bin/activate
export OMP_NUM_THREADS=1
PKG="--set prefit_generator=true --set cfdg.refresh_lag=4000 --set cfdg.online_batch_fraction=0.5"
run() { # env seed arm extra...
  local env=$1 seed=$2 arm=$3; shift 3
  echo "$(date -u +%T) start $env s$seed $arm $*"
  cfdg-aug run --algo iql --profile small --threads 1 --dataset ../shared/datasets/$env-medium-50k.hdf5 \
    --seed $seed --no-share-pretrained --augmentation $arm --out /tmp/s59/runs "$@" > /tmp/s59/log_${env}_s${seed}_${arm}_$#.txt 2>&1
  local rc=$?; echo "$(date -u +%T) end rc=$rc"
}
run hopper 0 none
run hopper 0 cfdg $PKG
run hopper 0 cfdg
run hopper 1 none
run hopper 1 cfdg $PKG

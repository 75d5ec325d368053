#!/bin/bash
# Whole-run overhead, one run at a time, nothing else running (issue 18 re-measurement, 2026-12-05).
cd /work/main && source .venv/bin/activate
export OMP_NUM_THREADS=1
PKG="--set prefit_generator=true --set cfdg.refresh_lag=4000 --set cfdg.online_batch_fraction=0.5"
run() { # env seed arm extra...
  local env=$1 seed=$2 arm=$3; shift 3
  echo "$(date -u +%T) start $env s$seed $arm $*"
  cfdg-aug run --algo iql --profile small --threads 1 --dataset ../shared/datasets/$env-medium-50k.hdf5 \
    --seed $seed --no-share-pretrained --augmentation $arm --out /tmp/s58/runs2 "$@" > /tmp/s58/log2_${env}_s${seed}_${arm}_$#.txt 2>&1
  echo "$(date -u +%T) end"
}
run hopper 0 cfdg $PKG
run hopper 1 cfdg $PKG
run walker2d 0 cfdg $PKG

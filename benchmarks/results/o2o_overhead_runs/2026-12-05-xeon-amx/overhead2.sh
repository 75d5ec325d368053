#!/bin/bash
# After overhead.sh, on the same machine, one run at a time: the walker2d pair (same commands).
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
run walker2d 0 none
run walker2d 0 cfdg $PKG

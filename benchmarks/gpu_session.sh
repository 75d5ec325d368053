#!/usr/bin/env bash
# What a lent GPU runs (issue 18: the test suite, the generator and overhead benchmarks on CUDA,
# compiled path included; issue 16: the paper profile's generator costs). Written for the `device`
# tool's machine (one H200, 16 cores, its own python3 with a CUDA torch, no network): the
# integrations' packages travel as wheels in .whl/ (see docs/benchmarks.md, "On a GPU").
#
#     bash benchmarks/gpu_session.sh OUTDIR [SECONDS]
#     GPU_STEPS="test_cuda o2o_overhead" bash benchmarks/gpu_session.sh OUTDIR   # only these steps
#
# With the `device` tool: run(command="bash benchmarks/gpu_session.sh $OUT 560", carry=[".whl"],
# timeout_s=600); .whl/ is kept out of git by .git/info/exclude (local to a checkout: add
# "/.whl/" there first), and docs/benchmarks.md ("On a GPU") lists the wheels.
#
# Steps, in order: test_cuda, suite (in the background), o2o_overhead, algos, few_step_256,
# few_step_1024_large, few_step_1024, train_small, train_paper (o2o_overhead moved first and algos
# and few_step_1024_large added after the first 2026-12-04 lease).
# Measured on the 2026-12-04 H200 (log: benchmarks/results/gpu_h200_2026-12-04/): start ~30 s,
# install 35 s, test_cuda 45 s, few_step_* ~30 s each, train_* ~60 s each, the suite 200 s on 8
# cores. The suite runs with CUDA hidden (CUDA_VISIBLE_DEVICES=): on 2026-12-04 it shared the GPU
# with the timed steps, through SB3's device="auto". The second lease (log:
# benchmarks/results/gpu_h200_2026-12-04b/): o2o_overhead alone, first, still did not finish in
# 480 s (`none` 168 s, `cfdg` killed 312 s in; the step now runs 10,000 online steps); algos took
# 106 s. Next lease: GPU_STEPS="o2o_overhead test_cuda" with SECONDS 590, then
# GPU_STEPS="few_step_1024_large train_small" in a second call while the machine is warm
# (train_small now adds the CUDA-graph variants of the generator's step).
#
# Every step has its own time limit and the whole script stops starting steps after SECONDS
# (default 570), so a slow step costs only itself; after each step the log and the results so far
# are copied to OUTDIR (one log, one tarball: the tool brings back at most 8 files).
set -u
OUT=${1:?usage: gpu_session.sh OUTDIR [SECONDS]}
BUDGET=${2:-570}
START=$(date +%s)
LOG=$OUT/log.txt
TAG=${GPU_TAG:-h200}
STEPS="test_cuda suite o2o_overhead algos few_step_256 few_step_1024_large few_step_1024 train_small train_paper"
for name in ${GPU_STEPS:-}; do
  [[ " $STEPS " == *" $name "* ]] || { echo "error: GPU_STEPS names '$name'; the steps are: $STEPS"; exit 2; }
done
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" benchmarks/results
STAMP=$(mktemp)  # results written after this are this session's (committed ones share the tag)
exec > >(tee -a "$LOG") 2>&1

selected() { [[ -z "${GPU_STEPS:-}" || " $GPU_STEPS " == *" $1 "* ]]; }
save() {
  find benchmarks/results -maxdepth 1 -type f -name "*$TAG*" -newer "$STAMP" -print0 \
    | tar czf "$OUT/results.tgz" --null -T - 2>/dev/null || true
}
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 left t0 rc
  shift 2
  selected "$name" || return 0
  left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 20 )); then echo "=== $name: skipped, ${left} s left of ${BUDGET}"; return; fi
  (( limit > left )) && limit=$left
  echo "=== $name (limit ${limit} s) at +$(( $(date +%s) - START )) s: $*"
  t0=$(date +%s)
  TQDM_DISABLE=1 timeout -k 10 "$limit" "$@"; rc=$?  # bars would fill the log (the suite runs with them)
  echo "=== $name: rc=$rc in $(( $(date +%s) - t0 )) s"
  save
}

echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
nproc; python3 --version
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), \
'capability', torch.cuda.get_device_capability())"

echo "=== install (wheels from .whl, the package editable)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
python3 -c "import cfdg_aug.integrations" 2>/dev/null \
  || ln -sfn ../integrations cfdg_aug/integrations  # the layout setuptools' package-dir gives
# A failed import is reported, not fatal: the steps that do not need it still run.
python3 -c "import cfdg_aug.integrations.d3rlpy, cfdg_aug.integrations.sb3, mujoco, d3rlpy; print('imports ok')"

# 1. CUDA correctness first: the tests that fit, sample, compile and run on the GPU.
step test_cuda 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs
# 2. The rest of the suite on the machine's CPUs, beside the GPU benchmarks (8 of 16 cores,
#    one thread each; CUDA hidden, so that it never shares the GPU with a timed step).
SUITE=
SUITE_LIMIT=$(( BUDGET - ($(date +%s) - START) - 10 ))
selected suite && (( SUITE_LIMIT > 30 )) && ( CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 timeout -k 10 "$SUITE_LIMIT" python3 -m pytest -q -p no:cacheprovider -n 8 --dist loadfile --timeout=300 \
    --ignore tests/test_cuda.py tests > "$OUT/pytest.txt" 2>&1; echo "suite rc=$?" >> "$OUT/pytest.txt" ) &
selected suite && (( SUITE_LIMIT > 30 )) && SUITE=$!
# 3. A CFDG IQL fine-tuning run against the same run without augmentation (small profile); the
#    longest step, so it goes first.
#    10,000 online steps (one refresh, the first fit; the next falls due after the last update): the
#    15,000 of the CPU table did not fit in 480 s at either lease; the CPU reference at 10,000 is
#    bench_d3rlpy_o2o_amd_10k.json.
step o2o_overhead 480 python3 -m benchmarks.bench_d3rlpy_o2o --device cuda --online-steps 10000 --tag "${TAG}_10k"
# 3a. IQL, SAC, PEX and APL updates on the GPU, IQL and SAC also with d3rlpy's CUDA graphs (issue 16).
step algos 150 python3 -m benchmarks.bench_algos --device cuda:0 --steps 100 --repeats 3 --tag "$TAG"

# 4. Few-step guided sampling against the SynthER stack (issue 18's ratios), eager and compiled.
step few_step_256 150 python3 -m benchmarks.bench_generator --only few_step --device cuda --widths 256 --tag "$TAG"
# 4b. The paper network (1024/6) at the paper profile's sampling chunk (100,000 rows), where bf16 may pay on a GPU.
step few_step_1024_large 150 python3 -m benchmarks.bench_generator --only few_step --device cuda --widths 1024 \
  --paper-rows 100000 --tag "${TAG}_paper_large"
# 5. The paper network (1024/6) in the same comparison.
step few_step_1024 120 python3 -m benchmarks.bench_generator --only few_step --device cuda --widths 1024 \
  --tag "${TAG}_paper"
# 6. Training steps/s: small and paper networks, fp32/bf16, batch 256/1024, eager/compiled.
step train_small 60 python3 -m benchmarks.bench_train_step --device cuda --steps 300 \
  --out "benchmarks/results/bench_train_step_${TAG}.json"
step train_paper 60 python3 -m benchmarks.bench_train_step --device cuda --steps 200 --width 1024 --depth 6 \
  --out "benchmarks/results/bench_train_step_${TAG}_paper.json"
[[ -n "$SUITE" ]] && { wait "$SUITE"; tail -n 15 "$OUT/pytest.txt"; }
save
echo "=== done at +$(( $(date +%s) - START )) s"

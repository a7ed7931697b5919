#!/usr/bin/env bash
# Run `pillm experiments` on a lent GPU machine (the `device` tool) and pack what it produced.
#
#   bash tools/device_experiments.sh SECONDS --profile paper --only benchmark [--only ...]
#   bash tools/device_experiments.sh SECONDS "--profile paper --only a --only b" "--profile paper --only c"
#
# Each quoted argument is a group of experiments run by its own `pillm experiments` process; the
# groups run at the same time (each with PILLM_JOBS concurrent runs spread over all GPUs), so the
# GPUs stay busy while one group waits for its slowest run. A single group may be given unquoted.
# Experiments in one group run in order, so a later one reuses identical runs of an earlier one.
#
# Lessons from the first paper-profile attempt (kept here so they are not paid for twice):
# - The GPU image has torch but not papermill/ipykernel: carry their wheels in .whl/
#   (tools/device_wheels.txt lists them; download command in docs/GPU_RUNS.md).
# - Never pipe the run into `tail`: killed runs leave worker processes holding the pipe open
#   and the call hangs until its limit, returning nothing. Log to $OUT instead.
# - The transfer back drops deep folders: results are packed into $OUT/results.tar.
# - The data does not travel by itself: copy it into the ignored data/ and carry "data".
# - Each call starts from this machine's working tree: results/ of the previous call is NOT kept
#   there. Unpack every call's results.tar here (tools/unpack_results.sh) before the next call, or it recomputes them.
set -u
# The device's copy of .git can be older than the working tree (it is not refreshed per call), so
# `git rev-parse HEAD` there names the wrong commit: hide it and let PILLM_GIT_COMMIT speak.
# Every run records it: refuse anything but a commit hash before any device time is spent (a
# placeholder would be recorded in every result).
if [ -n "${PILLM_GIT_COMMIT:-}" ] && ! [[ $PILLM_GIT_COMMIT =~ ^[0-9a-f]{40}$ ]]; then
  echo "PILLM_GIT_COMMIT must be the full 40-hex commit of the tree sent (git rev-parse HEAD here), got '$PILLM_GIT_COMMIT'" >&2
  exit 2
fi
if [ -n "${PILLM_GIT_COMMIT:-}" ] && [ -e .git ]; then mv .git /tmp/stale-git.$$; fi
limit=${1:?usage: tools/device_experiments.sh SECONDS pillm-experiments-args...}; shift
out=${OUT:-/tmp/out}
export PYTHONUNBUFFERED=1 PILLM_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
       NVSHMEM_DISABLE_NVLS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ -d .whl ] && ! python3 -c "import papermill, ipykernel" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
python3 -m ipykernel install --prefix /tmp/jup --name pillm >/dev/null 2>&1
export JUPYTER_PATH=/tmp/jup/share/jupyter
nvidia-smi -L
case "${1:-}" in *" "*) groups=("$@") ;; *) groups=("$*") ;; esac
# setsid + kill of the whole group: a stopped run must not leave workers behind.
pids=()
# Runs per group when PILLM_JOBS is not given: at most 8 per GPU and no more OpenMP threads than
# cores over all groups (36 runs with 72 threads on 64 cores ran slower than 15 on 32: GPU_RUNS.md).
# GNU nproc answers OMP_NUM_THREADS when it is set (exported above): count the cores without it.
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
if [ -z "${PILLM_JOBS:-}" ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l); gpus=$(( gpus > 0 ? gpus : 1 ))
  by_gpu=$(( 8 * gpus )); by_cpu=$(( cores / OMP_NUM_THREADS ))
  export PILLM_JOBS=$(( (by_gpu < by_cpu ? by_gpu : by_cpu) / ${#groups[@]} ))
  [ "$PILLM_JOBS" -ge 1 ] || PILLM_JOBS=1
fi
# A group's leading NAME=VALUE words are its own environment, e.g. "CUDA_VISIBLE_DEVICES=1 PILLM_JOBS=2
# --profile paper --only gap": the grid's workers then share only GPU 1 (experiments.visible_gpus).
envs=(); args=(); jobs=(); total=0
for g in "${groups[@]}"; do
  read -r -a words <<< "$g"; e=()
  while [ ${#words[@]} -gt 0 ] && [[ ${words[0]} =~ ^[A-Z_][A-Z0-9_]*= ]]; do e+=("${words[0]}"); words=("${words[@]:1}"); done
  j=$PILLM_JOBS; for kv in "${e[@]}"; do [[ $kv == PILLM_JOBS=* ]] && j=${kv#PILLM_JOBS=}; done
  envs+=("${e[*]}"); args+=("${words[*]}"); jobs+=("$j"); total=$(( total + j ))
done
echo "${#groups[@]} group(s), runs at once ${jobs[*]} (default PILLM_JOBS=$PILLM_JOBS), OMP_NUM_THREADS=$OMP_NUM_THREADS, $cores cores"
for i in "${!groups[@]}"; do
  read -r -a e <<< "${envs[$i]}"; read -r -a a <<< "${args[$i]}"
  # PILLM_OTHER_RUNS: the other groups' runs, recorded with each run (concurrent_runs)
  setsid timeout -s KILL "$limit" env PILLM_OTHER_RUNS=$(( total - jobs[i] )) "${e[@]}" \
    python3 -m pillm experiments "${a[@]}" > "$out/log$i.txt" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; echo "group $i (${groups[$i]}): pillm experiments exit $?"
  grep -E "^\[|pillm experiments:" "$out/log$i.txt" | grep -v "TCP" | tail -25
done
tar -cf "$out/results.tar" --exclude="checkpoint" results/  # checkpoints stay on the device (size)

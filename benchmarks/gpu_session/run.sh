#!/usr/bin/env bash
# The one GPU session (run by the device tool from the repository root, .gpu carried; see prepare.sh): every GPU
# check of issues 16 and 18 within 8 minutes. benchmarks/gpu_session/plan.py prices every stage first, from the
# host costs a dry run measured (measured_costs.json) and the deadlines the benchmarks enforce, and gives (c) the
# rest as its training time; each command runs under the plan's timeout. Only JSON, logs and the plan go to $OUT
# (the runs' folders and checkpoints live under /tmp and are removed).
#
# Try it first on the CPU (the toy stages, plus the host costs measured at the real session's sizes; then the
# real session's plan from them):
#   DRY_RUN=1 OUT=/tmp/gpu_dry DATA_ROOT=/work/data/cifar10/train bash benchmarks/gpu_session/run.sh
# DATA_ROOT: an ImageFolder of the 40,000 CIFAR-10 training JPEGs (default: the carried archive, extracted).
set -uo pipefail
OUT="${OUT:-/tmp/gpu-session}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=python3
here=benchmarks/gpu_session
began=$EPOCHREALTIME
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
if [ -z "${DRY_RUN:-}" ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
    data="${DATA_ROOT:-/tmp/cifar/cifar10/train}"
    [ -n "${DATA_ROOT:-}" ] || { mkdir -p /tmp/cifar && tar xzf .gpu/cifar10-train-jpeg.tar.gz -C /tmp/cifar; }
    $py $here/plan.py --costs $here/measured_costs.json > "$OUT/plan.txt"
    plan_ok=$?
    cat "$OUT/plan.txt"
    [ $plan_ok -eq 0 ] || { echo "the session does not fit its 8 minutes: see $OUT/plan.txt"; exit 1; }
    eval "$($py $here/plan.py --costs $here/measured_costs.json --shell)"
    dry=()
    holdout=(--holdout 10000)
    deadlines=(--reference-seconds "$bound_reference" --sandwich-seconds "$bound_sandwich"
               --score-seconds "$bound_score" --fidelity-seconds "$bound_fidelity")
    latency=(--configs "$latency_configs" --budgets $latency_budgets)
else
    export PYTHONPATH=$PWD
    data="${DATA_ROOT:-/tmp/c10_small/train}"
    archive="${ARCHIVE:-../shared/data/cifar10-train-jpeg.tar.gz}"
    if [ -f "$archive" ]; then  # the extraction the real session does, timed for its plan
        scratch=$(mktemp -d)
        t=$EPOCHREALTIME
        tar xzf "$archive" -C "$scratch"
        echo "{\"tar_s\": $(since "$t")}" > "$OUT/session_costs.json"
        rm -rf "$scratch"
    fi
    dry=(--dry-run)
    holdout=(--holdout 300)
    train_seconds=20
    # a CPU is tens of times slower than the GPU: deadlines that let every toy stage finish
    deadlines=(--reference-seconds 120 --sandwich-seconds 120 --score-seconds 300 --fidelity-seconds 900
               --fidelity-configs 4)
    latency=()
    bench_gpu_timeout=1500
    latency_timeout=300
    kill_grace=15
fi
$py -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)" > "$OUT/versions.txt" 2>&1
# issue 16: host costs (0), throughput (a), the sandwich's cost (b), a CIFAR-10 run scored with lightly's kNN (c), fidelity (d)
t=$EPOCHREALTIME
timeout -k "$kill_grace" "$bench_gpu_timeout" $py benchmarks/bench_gpu.py --data-root "$data" "${holdout[@]}" --out "$OUT" \
    --train-seconds "$train_seconds" "${deadlines[@]}" "${dry[@]}" > "$OUT/bench_gpu.log" 2>&1
gpu_exit=$?
gpu_seconds=$(since "$t")
echo "bench_gpu exit $gpu_exit after $gpu_seconds s (timeout $bench_gpu_timeout s)" >> "$OUT/bench_gpu.log"
# issue 18: latency as deployed (graph/fp16 order vs FLOPs, repeatability, batch-1 graph vs eager, gated vs static)
t=$EPOCHREALTIME
timeout -k "$kill_grace" "$latency_timeout" $py benchmarks/bench_gpu_latency.py --out "$OUT" "${latency[@]}" "${dry[@]}" \
    > "$OUT/bench_gpu_latency.log" 2>&1
latency_exit=$?
latency_seconds=$(since "$t")
echo "bench_gpu_latency exit $latency_exit after $latency_seconds s (timeout $latency_timeout s)" >> "$OUT/bench_gpu_latency.log"

echo "== bench_gpu (issue 16) =="
grep -E "^(RAN|PASS|FAIL|dry run)|raised|^\(c\) the loop" "$OUT/bench_gpu.log"
sed -n '/^verdicts:/,$p' "$OUT/bench_gpu.log"
[ $gpu_exit -ne 124 ] || echo "FAIL: bench_gpu killed by its $bench_gpu_timeout s timeout: the stages after the last verdict above did not finish"
echo "== bench_gpu_latency (issue 18) =="
grep -E "^\[|^(PASS|FAIL)" "$OUT/bench_gpu_latency.log" | grep -v "^\[flops"
sed -n '/^verdicts:/,$p' "$OUT/bench_gpu_latency.log"
[ $latency_exit -ne 124 ] || echo "FAIL: bench_gpu_latency killed by its $latency_timeout s timeout"
echo "== time =="
echo "session $(since "$began") s: bench_gpu $gpu_seconds s, bench_gpu_latency $latency_seconds s"
if [ -n "${DRY_RUN:-}" ]; then
    echo "== the real session's plan, from the host costs this dry run measured =="
    $py $here/plan.py --from-dry-run "$OUT" --write-costs "$OUT/measured_costs.json" | tee "$OUT/plan.txt"
    plan_ok=${PIPESTATUS[0]}
    [ $plan_ok -eq 0 ] || echo "FAIL: the real session would not fit its 8 minutes with a 20 % margin"
else
    plan_ok=0
fi
[ $gpu_exit -eq 0 ] && [ $latency_exit -eq 0 ] && [ $plan_ok -eq 0 ]

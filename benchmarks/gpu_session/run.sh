#!/usr/bin/env bash
# The one GPU session (run by the device tool from the repository root, .gpu carried; see prepare.sh):
# every GPU check of issues 16 and 18 within 8 minutes, each step under its own timeout, results and
# logs under $OUT. Try it first on the CPU: DRY_RUN=1 OUT=/tmp/gpu bash benchmarks/gpu_session/run.sh
set -uo pipefail
OUT="${OUT:-/tmp/gpu-session}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=python3
if [ -z "${DRY_RUN:-}" ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
    dry=()
    data=/tmp/cifar/cifar10/train
    mkdir -p /tmp/cifar && tar xzf .gpu/cifar10-train-jpeg.tar.gz -C /tmp/cifar
    holdout=(--holdout 10000)
    train_seconds=240   # (c): 4 minutes of the 8, so that the latency benchmark fits beside it
else
    export PYTHONPATH=$PWD
    dry=(--dry-run)
    data=/tmp/c10_small/train   # a small ImageFolder, e.g. 150 CIFAR JPEGs a class
    holdout=(--holdout 300)
    train_seconds=20
fi
$py -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)" > "$OUT/versions.txt" 2>&1
# issue 16: throughput (a), the sandwich's cost (b), a CIFAR-10 run scored with lightly's kNN (c), fidelity (d)
timeout 330 $py benchmarks/bench_gpu.py --data-root "$data" "${holdout[@]}" --out "$OUT/train" \
    --train-seconds "$train_seconds" "${dry[@]}" > "$OUT/bench_gpu.log" 2>&1
echo "bench_gpu exit $?" >> "$OUT/bench_gpu.log"
# issue 18: latency as deployed (graph/fp16 order vs FLOPs, repeatability, batch-1 graph vs eager, gated vs static)
timeout 150 $py benchmarks/bench_gpu_latency.py --out "$OUT/latency" "${dry[@]}" > "$OUT/bench_gpu_latency.log" 2>&1
echo "bench_gpu_latency exit $?" >> "$OUT/bench_gpu_latency.log"
cp "$OUT"/train/bench_gpu.json "$OUT"/latency/*.json "$OUT"/ 2>/dev/null
tail -n 25 "$OUT/bench_gpu.log" "$OUT/bench_gpu_latency.log"

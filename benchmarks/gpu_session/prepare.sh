#!/usr/bin/env bash
# Prepare, on the development machine, what the one GPU session carries (the device tool's `carry`):
# .gpu/whl (the wheels the GPU machine lacks, for its Python 3.12) and .gpu/cifar10-train-jpeg.tar.gz.
# .gpu/ is ignored by git (.git/info/exclude) and stays out of commits. Then, in one call of the
# device tool: command "bash benchmarks/gpu_session/run.sh", carry [".gpu"], timeout_s 560.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
mkdir -p .gpu/whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
for wheel in optuna==5.1.0 hydra-core==1.3.8 omegaconf==2.3.1 yacs==0.1.8 portalocker==4.4.2 termcolor==3.3.0 \
             alembic==1.20.1 colorlog==6.12.0 sqlalchemy==2.1.9 Mako==1.4.3; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .gpu/whl "$wheel"
done
# published as source only: built here (pure Python)
python3 -m pip wheel -q --no-deps -w .gpu/whl fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3 iopath==0.1.10
cp ../shared/data/cifar10-train-jpeg.tar.gz .gpu/
du -sh .gpu

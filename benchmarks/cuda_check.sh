#!/usr/bin/env bash
# Every CUDA check for a session with a GPU, in one run, within 10 minutes (estimated 6-7 on one H100/H200;
# not run yet: the session that wrote it had no GPU):
#   bash benchmarks/cuda_check.sh OUTDIR
# 0. wheels:   where polars, typer, rich or safetensors are missing (a GPU machine without a package index),
#              install them from benchmarks/wheels/ (git-ignored; BENCHMARKS.md says how to fill it);
# 1. gpu:      the cards, driver and library versions;
# 2. data:     the Books-size synthetic dataset (benchmarks/scale.py data: ~835K users, ~500K items,
#              ~9.5M interactions after prepare's 5-core), generated and prepared on this machine;
# 3. pretrain: a real `xdrec pretrain --device cuda` on it, one epoch at batch 1024 (loss auto: sampled);
# 4. scale:    benchmarks/scale.py bench on one GPU: sequences/s, epoch time, evaluation users/s over the
#              whole catalogue, NDCG@10 and peak GPU memory at batch 128 and 1024 (+ in-batch negatives);
# 5. scale-N:  the same under torchrun on every GPU (DDP over NCCL), when there is more than one;
# 6. tests:    the CUDA training test, the item-chunked ranking tests and the torchrun (gloo) tests.
# Each step has its own time limit, cut to what is left of the 10 minutes, and writes its log to OUTDIR;
# a failing step does not stop the rest, and the script's exit status says whether any failed.
set -uo pipefail
out=${1:?usage: bash benchmarks/cuda_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
budget=${CUDA_CHECK_SECONDS:-590}
ws="${TMPDIR:-/tmp}/xdrec-books-ws"  # 115 MB of data and a 128 MB model: not in OUTDIR
failed=0
step() {  # step NAME SECONDS COMMAND...: run one check with a time limit, log to OUTDIR/NAME.log
    local name=$1 limit=$2
    shift 2
    local left=$((budget - SECONDS))
    [ "$limit" -le "$left" ] || limit=$left
    if [ "$limit" -lt 10 ]; then
        echo "== $name: skipped, the 10 minutes are spent"
        failed=1
        return
    fi
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=1
}
if ! python3 -c "import polars, typer, rich, safetensors" 2>/dev/null && [ -d benchmarks/wheels ]; then
    step wheels 60 python3 -m pip install -q --no-index --find-links benchmarks/wheels polars typer rich safetensors
fi
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

step gpu 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv && python3 -c "
import platform, polars, torch
print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"polars\", polars.__version__, \"devices\", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"'
rm -rf "$ws"
step data 200 /usr/bin/time -v python3 benchmarks/scale.py data --workspace "$ws"
step pretrain 120 /usr/bin/time -v python3 -m xdrec --workspace "$ws" pretrain --device cuda --epochs 1 \
    --batch-size 1024 --lr 0.0028 --json --quiet
step scale 170 python3 benchmarks/scale.py bench --workspace "$ws" --device cuda --json
if [ "$gpus" -gt 1 ]; then
    step scale-$gpus 150 python3 -m torch.distributed.run --standalone --nproc-per-node "$gpus" \
        benchmarks/scale.py bench --workspace "$ws" --device cuda --setups 1024:sqrt 1024:sqrt:in-batch --json
fi
step tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_distributed.py \
    tests/test_metrics.py -k "cuda or chunk or torchrun or gloo"
cp "$ws"/models/source-only/{config.json,metrics.jsonl} "$out/" 2>/dev/null
rm -rf "$ws"
exit $failed

#!/usr/bin/env bash
# The CUDA checks for a session with a GPU, in one run (about five minutes on an H100):
#   bash benchmarks/cuda_check.sh OUTDIR
# 1. the card, driver and library versions;
# 2. the CUDA test (bf16 autocast training, resume, torch.compile);
# 3. benchmarks/train.py on the GPU: training and full-ranking evaluation throughput;
# 4. `xdrec demo --device cuda`: the whole pipeline, timed, with its report as JSON;
# 5. the whole test suite with CUDA visible, so every `--device auto` path in it runs on the GPU.
# Each step has its own time limit and writes its log to OUTDIR; a failing step does not stop the rest,
# and the script's exit status says whether any failed.
set -uo pipefail
out=${1:?usage: bash benchmarks/cuda_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
failed=0
step() {  # step NAME SECONDS COMMAND...: run one check with a time limit, log to OUTDIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=1
}

step gpu 60 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv && python3 -c "
import platform, polars, torch
print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"polars\", polars.__version__, \"device\", torch.cuda.get_device_name(0),
      \"bf16\", torch.cuda.is_bf16_supported())"'
step cuda-test 150 python3 -m pytest -q -p no:cacheprovider tests/test_training.py -k cuda
step train 200 python3 benchmarks/train.py --device cuda --users 50000 --steps 200 --eval-users 10000 --json
step demo 200 /usr/bin/time -v python3 -m xdrec --workspace "$out/demo-ws" demo --device cuda --json --quiet
rm -rf "$out/demo-ws"
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 4")  # pytest-xdist, where installed
step suite 240 python3 -m pytest -q -p no:cacheprovider $parallel tests
exit $failed

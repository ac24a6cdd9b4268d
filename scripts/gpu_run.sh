#!/usr/bin/env bash
# Issue 17's GPU run: one prepared pass, each step time-boxed (480 s in all), for an
# H200. Run it from the repository root on the device machine:
#     bash scripts/gpu_run.sh            (results under $OUT/gpu_run, or /tmp/gpu_run)
# GPU-sized models (examples/gpu/: activations of several GiB) in float32 and bfloat16, the
# original against the generated module against the expert; memory_budget="auto" at sizes
# that fit (the loops then take every row in one chunk); GPT under torch.compile, with the
# compiled module's peak against the eager module's. Each step's last lines are printed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}/gpu_run"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s): $*"
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "rc $?"
    tail -n 8 "$out/$name.txt"
}
gpu=(examples/gpu/gpt_8k.py examples/gpu/evoformer_768.py)
step fp32 200 python scripts/bench.py "${gpu[@]}" examples/gpu/vae_2048.py --device cuda --repeats 5
step bf16 140 python scripts/bench.py "${gpu[@]}" --device cuda --repeats 5 --dtype bf16
step auto 50 python scripts/bench.py examples/gpt.py examples/vit.py --device cuda --repeats 5 --auto
step compile 90 python scripts/bench.py examples/vit.py --device cuda --repeats 5 \
    --compile examples/gpu/gpt_8k.py

#!/usr/bin/env bash
# Decode and prefill of llama.cpp (through a LLamaSharp 0.30 bench console) and of sharegpt4v-bench on the same
# weights, one after another in one script, 2 threads: docs/quantization.md reports what it printed.
# Usage: scripts/bench-llamacpp/side_by_side.sh MODEL_DIR GGUF_DIR LLAMASHARP_BENCH_DLL [FORMATS]
#   MODEL_DIR   the benchmark checkpoint (make-checkpoint); GGUF_DIR holds llm-<fmt>.gguf written from it by
#               `sharegpt4v convert --format gguf --dtype <fmt>` (the same blocks our loader makes at --dtype <fmt>)
#   LLAMASHARP_BENCH_DLL  the LLamaSharp console's `run MODEL.gguf --runs N --warmup N --decode N` (see the
#               llama.cpp anchor recipe); FORMATS default "q8_0 q4_0".
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:?model folder}; GGUF=${2:?gguf folder}; LLAMA=${3:?LLamaSharp bench dll}; FORMATS=${4:-q8_0 q4_0}
IMAGE=tests/ShareGPT4V.Tests/Fixtures/oracle/hf_llama2vocab/image1.png
dotnet build samples/ShareGPT4V.Bench -c Release -v q -nologo >/dev/null
for f in $FORMATS; do
  echo "== llama.cpp $f $(date -u +%T), load average $(cut -d' ' -f1 /proc/loadavg)"
  BENCH_LOG=${BENCH_LOG:-/tmp/llamasharp-native.log} dotnet "$LLAMA" run "$GGUF/llm-$f.gguf" --runs 2 --warmup 1 --decode 32 2>&1 | grep -E '^\{|run [0-9]' || true
  echo "== sharegpt4v $f $(date -u +%T), load average $(cut -d' ' -f1 /proc/loadavg)"
  dotnet samples/ShareGPT4V.Bench/bin/Release/net10.0/sharegpt4v-bench.dll run --model "$MODEL" --dtype "$f" \
    --image "$IMAGE" --max-new-tokens 32 --threads 2 --repeat 2 --skip-limits 2>&1 | grep -E '^(weight storage|vision|prefill|decode|memory|placement) '
done

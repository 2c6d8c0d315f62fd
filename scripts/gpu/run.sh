#!/usr/bin/env bash
# The GPU checks of ShareGPT4V.Cuda, run ON the GPU machine (PyTorch installed, no .NET SDK, no network), from the
# repository root, with .gpu-carry/ made beforehand by scripts/gpu/prepare.sh on a machine with the .NET SDK:
#
#   bash scripts/gpu/run.sh                 # device tool: carry [".gpu-carry"], timeout_s 600
#
# Stages (STAGES, comma-separated, default all): native (which libtorch loads, devices), glue (rebuild TorchSharp's
# native glue against this PyTorch when the packaged one does not fit), oracle (parity on CUDA in fp32, fp32 with
# TF32, fp16, bf16), checkpoint (random-weight llava-1.5-7b-hf folder), bench (.NET timings at batch 1 and 8),
# hf (transformers on the same weights and inputs). A stage that would not finish in the time left (BUDGET_S,
# default 540 s from the start) is skipped and named. Results: $OUT (default ./gpu-out): summary.txt, native.json,
# oracle.json, bench-dotnet.json, bench-hf.json, logs.tar.gz and, when one was built, libLibTorchSharp.so (put it in
# .gpu-carry/ to skip the build next time). BENCH_PRESET=small writes 4-layer models instead of the full 7B.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
STAGES=${STAGES:-native,glue,oracle,checkpoint,bench,hf}
BUDGET_S=${BUDGET_S:-540}
MAX_NEW=${MAX_NEW:-128}
REPEAT=${REPEAT:-3}
start=$(date +%s)
logs=$(mktemp -d)
steps="$logs/steps.txt"
finish() {
  python3 "$root/scripts/gpu/summarize.py" "$OUT" > /dev/null 2>&1
  cat "$steps" >> "$OUT/summary.txt" 2>/dev/null
  tar -C "$logs" -czf "$OUT/logs.tar.gz" . 2>/dev/null
  echo "================ summary ================"
  cat "$OUT/summary.txt"
}
trap finish EXIT
say() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$steps"; }
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }
want() { [[ ",$STAGES," == *",$1,"* ]]; }
# Runs a stage if at least $2 seconds are left, under a timeout of what is left; output to logs/$1.log.
run_stage() {
  local name=$1 need=$2; shift 2
  if ! want "$name"; then return 0; fi
  if [ "$(left)" -lt "$need" ]; then say "SKIPPED $name: $(left) s left, it needs about $need s (rerun with STAGES=$name)"; return 0; fi
  say "start $name"
  timeout --kill-after=10 "$(left)" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$logs/$name.log"
  say "end $name: exit $rc"
  return $rc
}

carry="$root/.gpu-carry"
# Scratch space outside the tree that a second call on the still-warm machine finds again (checkpoint, built glue).
scratch="${TMPDIR:-$(dirname "$(mktemp -u)")}/sgv-gpu"
mkdir -p "$scratch"
[ -x "$carry/gpucheck/sharegpt4v-gpucheck" ] || { say "no .gpu-carry/gpucheck: run scripts/gpu/prepare.sh first and carry .gpu-carry"; exit 1; }
app="$scratch/app"
rm -rf "$app" && cp -r "$carry/gpucheck" "$app"
gc="$app/sharegpt4v-gpucheck"
fixtures="$root/tests/ShareGPT4V.Tests/Fixtures"
model="$scratch/bench-model"
inputs="$scratch/inputs.safetensors"

# ---- the machine
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.mem --format=csv > "$logs/nvidia-smi.txt" 2>&1
say "gpu: $(tail -n 1 "$logs/nvidia-smi.txt")"
read -r torch_lib torch_ver < <(python3 -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'), torch.__version__)")
say "python3 torch $torch_ver, libtorch folder $torch_lib"
# The CUDA libraries of the pip wheels (nvidia/*/lib), for the LD_LIBRARY_PATH route if loading by path alone fails.
nv_libs=$(python3 -c "
import glob, os, site
dirs = {os.path.dirname(p) for sp in site.getsitepackages() for p in glob.glob(os.path.join(sp, 'nvidia', '**', 'lib*.so*'), recursive=True)}
print(':'.join(sorted(dirs)))")
export SHAREGPT4V_LIBTORCH_DIR="$torch_lib"

# ---- native: the library's own mechanism first (load by path), then the library path route
# (always runs: a few seconds, and every later stage depends on it)
STAGES="native,$STAGES"
native_ok=0
run_stage native 20 "$gc" native --libtorch-dir "$torch_lib" --json "$OUT/native.json" && native_ok=1
if [ $native_ok = 0 ] && ! grep -q "does not fit" "$OUT/native.json" 2>/dev/null; then
  say "loading by path alone failed; retrying with LD_LIBRARY_PATH=torch/lib + nvidia/*/lib"
  export LD_LIBRARY_PATH="$torch_lib:$nv_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cp "$logs/native.log" "$logs/native-by-path.log"
  run_stage native 20 "$gc" native --libtorch-dir "$torch_lib" --json "$OUT/native.json" && native_ok=1
fi

# ---- glue: TorchSharp 0.107's libLibTorchSharp.so was built for libtorch 2.10; rebuild it when it does not fit
# (runs whenever the packaged glue does not fit: nothing else can work without it)
if [ $native_ok = 0 ] && grep -q "does not fit" "$OUT/native.json" 2>/dev/null; then
  say "the packaged glue does not fit torch $torch_ver: $(python3 -c "import json; print(json.load(open('$OUT/native.json'))['message'][:400])")"
  if command -v nm > /dev/null; then
    nm -D --undefined-only "$app/libLibTorchSharp.so" | awk '{print $2}' | sort -u > "$logs/glue-undefined.txt"
    for f in "$torch_lib"/lib*.so*; do nm -D --defined-only "$f" 2>/dev/null; done | awk '{print $3}' | sort -u > "$logs/torch-defined.txt"
    comm -23 "$logs/glue-undefined.txt" "$logs/torch-defined.txt" | grep -v "@" > "$logs/glue-missing.txt"
    say "glue symbols not defined by this libtorch: $(wc -l < "$logs/glue-missing.txt") (list in logs: glue-missing.txt)"
  fi
  glue=""
  for g in "$scratch/glue"/libLibTorchSharp.so "$carry/libLibTorchSharp.so"; do [ -f "$g" ] && { glue=$g; break; }; done
  if [ -n "$glue" ]; then
    say "using the glue built earlier: $glue"
  elif [ -f "$carry/torchsharp-native.tar.gz" ]; then
    STAGES="$STAGES,glue"
    cp "$logs/native.log" "$logs/native-packaged-glue.log"
    run_stage glue 150 bash "$root/scripts/gpu/build-libtorchsharp.sh" "$carry/torchsharp-native.tar.gz" "$scratch/glue"
    cp "$scratch/glue"/build.log "$logs/glue-build.log" 2>/dev/null
    [ -f "$scratch/glue"/libLibTorchSharp.so ] && glue="$scratch/glue"/libLibTorchSharp.so && cp "$glue" "$OUT/libLibTorchSharp.so"
  else
    say "no .gpu-carry/torchsharp-native.tar.gz to build the glue from (prepare.sh TORCHSHARP_SOURCE)"
  fi
  if [ -n "$glue" ]; then
    cp "$glue" "$app/libLibTorchSharp.so"
    run_stage native 20 "$gc" native --libtorch-dir "$torch_lib" --json "$OUT/native.json" && native_ok=1
  fi
fi
if [ $native_ok = 0 ]; then say "CUDA is not usable from .NET here: see native.json; later stages skipped"; exit 1; fi

# ---- oracle parity on CUDA
run_stage oracle 60 "$gc" oracle --device cuda:0 --fixtures "$fixtures" --libtorch-dir "$torch_lib" --json "$OUT/oracle.json"

# ---- benchmark-size model with random weights (the real llava-1.5-7b-hf configuration and tokenizer)
if want checkpoint && [ ! -f "$model/model.safetensors.index.json" ]; then
  small=()
  [ "${BENCH_PRESET:-7b}" = small ] && small=(--layers 4 --vision-layers 4)
  run_stage checkpoint 90 "$gc" make-checkpoint --from "$fixtures/anchors/llava-hf__llava-1.5-7b-hf" \
    --tokenizer-model "$fixtures/tokenizers/llama2/tokenizer.model" --out "$model" --device cuda:0 --dtype float16 \
    --libtorch-dir "$torch_lib" "${small[@]}"
fi

# ---- .NET timings; nvidia-smi samples the device memory independently of the app
if [ -f "$model/model.safetensors.index.json" ]; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$logs/smi-memory-mib.txt" 2>/dev/null &
  smi=$!
  run_stage bench 120 "$gc" bench --model "$model" --image "$fixtures/oracle/hf_llama2vocab/image1.png" --device cuda:0 \
    --dtype float16 --batches 1,8 --max-new-tokens "$MAX_NEW" --repeat "$REPEAT" --context 2048 \
    --dump-inputs "$inputs" --libtorch-dir "$torch_lib" --json "$OUT/bench-dotnet.json"
  kill $smi 2>/dev/null
  [ -s "$logs/smi-memory-mib.txt" ] && say "nvidia-smi memory.used during the .NET bench: min $(sort -n "$logs/smi-memory-mib.txt" | head -1) MiB, max $(sort -n "$logs/smi-memory-mib.txt" | tail -1) MiB"
  # The sample bench app, when prepare.sh published one: best effort, its options may differ.
  if want bench && [ -x "$carry/bench/ShareGPT4V.Bench" ] && [ "$(left)" -gt 90 ]; then
    run_stage bench 90 "$carry/bench/ShareGPT4V.Bench" --model "$model" --image "$fixtures/oracle/hf_llama2vocab/image1.png" \
      --device cuda:0 --dtype float16 --batch 1 --max-new-tokens 64 --json "$logs/bench-sample.json" || true
  fi
fi

# ---- transformers on the same GPU, weights and inputs
if [ -f "$inputs" ]; then
  run_stage hf 120 python3 "$root/scripts/gpu/hf_side_by_side.py" --model "$model" --inputs "$inputs" --batches 1,8 \
    --max-new-tokens "$MAX_NEW" --repeat "$REPEAT" --dtype float16 --dotnet-json "$OUT/bench-dotnet.json" --json "$OUT/bench-hf.json"
fi
say "done in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# The GPU checks, run ON the GPU machine (PyTorch installed, no .NET SDK, no network), from the repository root, with
# .gpu-carry/ made beforehand by scripts/gpu/prepare.sh on a machine with the .NET SDK:
#
#   bash scripts/gpu/run.sh                 # device tool: carry [".gpu-carry"], timeout_s 600
#
# Two published apps do the work: sharegpt4v-gpucheck (native, oracle) and the benchmark, sharegpt4v-bench
# (make-checkpoint, run). Stages (STAGES, comma-separated, default all): native (which libtorch loads, devices), glue
# (rebuild TorchSharp's native glue against this PyTorch when the packaged one does not fit), oracle (parity on CUDA in
# fp32, fp32 with TF32, fp16, bf16), checkpoint (the bench's benchmark-size llava-hf model: CLIP ViT-L/14-336 + a 1.1B
# LLaMA, seeded random weights), bench (the bench at each batch of BATCHES), hf (transformers on the same weights and
# inputs). A stage that would not finish in the time left (BUDGET_S, default 540 s from the start) is skipped and named.
#
# Results in $OUT (default ./gpu-out): summary.txt, native.json, oracle.json, bench-dotnet.jsonl (one bench JSON line
# per batch), bench-hf.json, logs.tar.gz and, when one was built, libLibTorchSharp.so (put it in .gpu-carry/ to skip
# the build next time): 7 files, within the device tool's 8.
#
# Settings: DEVICE (cuda:0), DTYPE (bf16: the checkpoint's and both runs' dtype), BATCHES ("1 8"), MAX_NEW (128 new
# tokens), REPEAT (3: vision and prefill medians; transformers' runs), LLM_LAYERS (empty = the bench's 22; fewer for a
# quick try), TORCH_LIB (default: python3's torch/lib). DEVICE=cpu with TORCH_LIB set to a CPU libtorch folder rehearses
# the whole script on a machine without a GPU (the hf stage then needs python3 with torch and transformers, or is skipped).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
STAGES=${STAGES:-native,glue,oracle,checkpoint,bench,hf}
BUDGET_S=${BUDGET_S:-540}
DEVICE=${DEVICE:-cuda:0}
DTYPE=${DTYPE:-bf16}
BATCHES=${BATCHES:-1 8}
MAX_NEW=${MAX_NEW:-128}
REPEAT=${REPEAT:-3}
LLM_LAYERS=${LLM_LAYERS:-}
start=$(date +%s)
logs=$(mktemp -d)
steps="$logs/steps.txt"
finish() {
  python3 "$root/scripts/gpu/summarize.py" "$OUT" > /dev/null 2>&1
  cat "$steps" >> "$OUT/summary.txt" 2>/dev/null
  tar -C "$logs" -czf "$OUT/logs.tar.gz" . 2>/dev/null
  rm -rf "$logs"
  echo "================ summary ================"
  cat "$OUT/summary.txt"
}
trap finish EXIT
say() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$steps"; }
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }
want() { [[ ",$STAGES," == *",$1,"* ]]; }
# Runs a stage (its name's first word decides whether it is wanted) if at least $2 seconds are left, under a timeout of
# what is left; output to logs/$1.log.
run_stage() {
  local name=$1 need=$2; shift 2
  if ! want "${name%%-*}"; then return 0; fi
  if [ "$(left)" -lt "$need" ]; then say "SKIPPED $name: $(left) s left, it needs about $need s (rerun with STAGES=${name%%-*})"; return 0; fi
  say "start $name"
  timeout --kill-after=10 "$(left)" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$logs/$name.log"
  say "end $name: exit $rc"
  return $rc
}
# Samples the device memory nvidia-smi reports every 100 ms into logs/$1 until smi_stop (none without nvidia-smi).
smi_pid=""
smi_start() {
  command -v nvidia-smi > /dev/null || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$logs/$1" 2>/dev/null &
  smi_pid=$!
}
smi_stop() {
  [ -n "$smi_pid" ] || return 0
  kill "$smi_pid" 2>/dev/null; wait "$smi_pid" 2>/dev/null; smi_pid=""
  [ -s "$logs/$1" ] && say "nvidia-smi memory.used during $2: min $(sort -n "$logs/$1" | head -1) MiB, max $(sort -n "$logs/$1" | tail -1) MiB"
}

carry="$root/.gpu-carry"
# Scratch space outside the tree that a second call on the still-warm machine finds again (checkpoint, built glue).
scratch="${TMPDIR:-$(dirname "$(mktemp -u)")}/sgv-gpu"
mkdir -p "$scratch"
for a in sharegpt4v-gpucheck sharegpt4v-bench; do
  [ -x "$carry/apps/$a" ] || { say "no .gpu-carry/apps/$a: run scripts/gpu/prepare.sh first and carry .gpu-carry"; exit 1; }
done
app="$scratch/apps"
rm -rf "$app" && cp -r "$carry/apps" "$app"
gc="$app/sharegpt4v-gpucheck"
bench="$app/sharegpt4v-bench"
fixtures="$root/tests/ShareGPT4V.Tests/Fixtures"
image="$fixtures/oracle/hf_llama2vocab/image1.png"
model="$scratch/bench-model-$DTYPE-${LLM_LAYERS:-22}"
inputs="$scratch/inputs.safetensors"
rm -f "$OUT/bench-dotnet.jsonl"

# ---- the machine
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.mem --format=csv > "$logs/nvidia-smi.txt" 2>&1
  say "gpu: $(tail -n 1 "$logs/nvidia-smi.txt")"
fi
torch_ver=$(python3 -c "import torch; print(torch.__version__)" 2>/dev/null)
torch_lib=${TORCH_LIB:-$(python3 -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))" 2>/dev/null)}
[ -n "$torch_lib" ] || { say "python3 has no torch and TORCH_LIB is not set: no libtorch to run on"; exit 1; }
say "python3 torch ${torch_ver:-(none)}; libtorch folder $torch_lib; device $DEVICE, $DTYPE"
# The CUDA libraries of the pip wheels (nvidia/*/lib), for the LD_LIBRARY_PATH route if loading by path alone fails.
nv_libs=$(python3 -c "
import glob, os, site
dirs = {os.path.dirname(p) for sp in site.getsitepackages() for p in glob.glob(os.path.join(sp, 'nvidia', '**', 'lib*.so*'), recursive=True)}
print(':'.join(sorted(dirs)))" 2>/dev/null)
export SHAREGPT4V_LIBTORCH_DIR="$torch_lib"
allow_cpu=()
[ "$DEVICE" = cpu ] && allow_cpu=(--allow-cpu)

# ---- native: the library's own mechanism first (load by path), then the library path route
# (always runs: a few seconds, and every later stage depends on it)
STAGES="native,$STAGES"
native_ok=0
run_stage native 20 "$gc" native --libtorch-dir "$torch_lib" "${allow_cpu[@]}" --json "$OUT/native.json" && native_ok=1
if [ $native_ok = 0 ] && [ -n "$nv_libs" ] && ! grep -q "does not fit" "$OUT/native.json" 2>/dev/null; then
  say "loading by path alone failed; retrying with LD_LIBRARY_PATH=torch/lib + nvidia/*/lib"
  export LD_LIBRARY_PATH="$torch_lib:$nv_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cp "$logs/native.log" "$logs/native-by-path.log"
  run_stage native 20 "$gc" native --libtorch-dir "$torch_lib" "${allow_cpu[@]}" --json "$OUT/native.json" && native_ok=1
fi

# ---- glue: TorchSharp 0.107's libLibTorchSharp.so was built for libtorch 2.10; rebuild it when it does not fit
# (runs whenever the packaged glue does not fit: nothing else can work without it). Both apps share the app folder's copy.
if [ $native_ok = 0 ] && grep -q "does not fit" "$OUT/native.json" 2>/dev/null; then
  say "the packaged glue does not fit torch ${torch_ver:-?}: $(python3 -c "import json; print(json.load(open('$OUT/native.json'))['message'][:400])")"
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
    run_stage native 20 "$gc" native --libtorch-dir "$torch_lib" "${allow_cpu[@]}" --json "$OUT/native.json" && native_ok=1
  fi
fi
if [ $native_ok = 0 ]; then say "CUDA is not usable from .NET here: see native.json; later stages skipped"; exit 1; fi

# ---- oracle parity on the device
run_stage oracle 60 "$gc" oracle --device "$DEVICE" --fixtures "$fixtures" --libtorch-dir "$torch_lib" --json "$OUT/oracle.json"

# ---- the benchmark-size model (the bench's make-checkpoint: llava-hf layout, seeded random weights, LLaMA-2 tokenizer)
# (.complete marks a folder whose writing finished: a later call reuses it)
if want checkpoint && [ ! -f "$model/.complete" ]; then
  layers=()
  [ -n "$LLM_LAYERS" ] && layers=(--llm-layers "$LLM_LAYERS")
  run_stage checkpoint 90 "$bench" make-checkpoint --out "$model" --dtype "$DTYPE" --overwrite --libtorch-dir "$torch_lib" "${layers[@]}" \
    && touch "$model/.complete"
fi

# ---- the bench, one process per batch size (each loads the model; its JSON line is the last line of its log)
if [ -f "$model/.complete" ]; then
  for b in $BATCHES; do
    dump=()
    [ "$b" = "$(echo $BATCHES | cut -d' ' -f1)" ] && dump=(--dump-inputs "$inputs")
    smi_start "smi-bench-b$b.txt"
    run_stage "bench-b$b" 60 "$bench" run --model "$model" --image "$image" --device "$DEVICE" --dtype "$DTYPE" --batch "$b" \
      --max-new-tokens "$MAX_NEW" --repeat "$REPEAT" --threads "$(nproc)" --libtorch-dir "$torch_lib" "${dump[@]}" --json
    smi_stop "smi-bench-b$b.txt" "the bench at batch $b"
    grep '^{"model"' "$logs/bench-b$b.log" 2>/dev/null | tail -n 1 >> "$OUT/bench-dotnet.jsonl"
  done
fi

# ---- transformers on the same device, weights and inputs
if [ -f "$inputs" ] && want hf; then
  if python3 -c "import torch, transformers" 2>/dev/null; then
    run_stage hf 120 python3 "$root/scripts/gpu/hf_side_by_side.py" --model "$model" --inputs "$inputs" --device "$DEVICE" \
      --batches "$(echo $BATCHES | tr ' ' ',')" --max-new-tokens "$MAX_NEW" --repeat "$REPEAT" --dtype "$DTYPE" \
      --dotnet-json "$OUT/bench-dotnet.jsonl" --json "$OUT/bench-hf.json"
  else
    say "SKIPPED hf: python3 here has no torch + transformers"
  fi
fi
say "done in $(( $(date +%s) - start )) s"

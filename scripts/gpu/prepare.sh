#!/usr/bin/env bash
# Prepares a GPU run, on a machine with the .NET SDK (not the GPU machine): fills .gpu-carry/ (ignored by git),
# which the device tool carries along with the working tree, then checks what can be checked without a GPU.
#
#   scripts/gpu/prepare.sh [TORCHSHARP_SOURCE]
#
# - .gpu-carry/apps/: tools/ShareGPT4V.GpuCheck (sharegpt4v-gpucheck: native, oracle) and samples/ShareGPT4V.Bench
#   (sharegpt4v-bench: make-checkpoint, run) published self-contained, single-file, compressed and trimmed (framework
#   only) into one folder, sharing TorchSharp's glue, WITHOUT any libtorch (-p:ShareGPT4VExternalLibTorch=true leaves
#   the CPU package out): on the GPU machine they load PyTorch's own libtorch.
# - .gpu-carry/torchsharp-native.tar.gz: TorchSharp's src/Native at the TorchSharp version the repo uses, so the GPU
#   machine (no network) can rebuild the native glue against its libtorch. TORCHSHARP_SOURCE is a clone of TorchSharp's
#   public repository (a work tree or a bare git folder) or a folder holding src/Native; TORCHSHARP_REV picks the
#   commit (default c20b6a1c, the 0.107.0 release). Without it the GPU run can only use the packaged glue.
# - .gpu-carry/libLibTorchSharp.so: optional, a glue built by an earlier GPU run (its $OUT), to skip the build.
#
# Checks: the publishes carry no libtorch, everything that travels stays under the device tool's 64 MiB, both apps
# start and refuse CUDA here with a DeviceException, and, through an external CPU libtorch (LOCAL_LIBTORCH_DIR, by
# default the libtorch-cpu-linux-x64 package's folder in the NuGet cache), the oracle passes and the bench runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=.gpu-carry
apps=$carry/apps
keep_glue=""
[ -f "$carry/libLibTorchSharp.so" ] && keep_glue=$(mktemp) && cp "$carry/libLibTorchSharp.so" "$keep_glue"
rm -rf "$apps" "$carry/gpucheck" "$carry/bench" "$carry/torchsharp-native.tar.gz"
mkdir -p "$carry"
[ -n "$keep_glue" ] && mv "$keep_glue" "$carry/libLibTorchSharp.so"

# A build tree of its own (artifacts/ is ignored): the publish leaves out the CPU libtorch package, which would
# otherwise change the restore of the projects' usual build.
publish() {
  local log
  log=$(mktemp)
  dotnet publish "$1" -c Release -r linux-x64 --self-contained --artifacts-path artifacts/gpu-publish -p:ShareGPT4VExternalLibTorch=true \
    -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true -p:PublishTrimmed=true -p:TrimMode=partial -p:DebugType=none \
    -p:GenerateDocumentationFile=false -o "$apps" > "$log" 2>&1 || { tail -20 "$log"; rm -f "$log"; return 1; }
  rm -f "$log"
}
publish tools/ShareGPT4V.GpuCheck
publish samples/ShareGPT4V.Bench
# A libtorch next to the apps would be loaded instead of (or beside) the GPU machine's CUDA build.
if find "$apps" -name 'libtorch*.so' -o -name 'libc10*.so' | grep -q .; then echo "error: the publish carries libtorch: $(find "$apps" -name 'lib*.so')"; exit 1; fi

if [ -n "${1:-}" ]; then
  rev=${TORCHSHARP_REV:-c20b6a1c}
  if git --git-dir="$1" cat-file -e "$rev^{commit}" 2>/dev/null; then
    git --git-dir="$1" archive --format=tar "$rev" src/Native | gzip -9 > "$carry/torchsharp-native.tar.gz"
  elif git -C "$1" cat-file -e "$rev^{commit}" 2>/dev/null; then
    git -C "$1" archive --format=tar "$rev" src/Native | gzip -9 > "$carry/torchsharp-native.tar.gz"
  elif [ -d "$1/src/Native/LibTorchSharp" ]; then
    tar -C "$1" -czf "$carry/torchsharp-native.tar.gz" src/Native
  else
    echo "error: $1 is neither a TorchSharp git repository with commit $rev nor a folder with src/Native"; exit 1
  fi
fi

# What travels: tracked and untracked-not-ignored files, plus the carried folder.
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | awk '/\ttotal$/ {s+=$1} END {print s+0}')
carried=$(du -sb "$carry" | cut -f1)
total=$(( tree + carried ))
printf 'working tree %.1f MiB + .gpu-carry %.1f MiB = %.1f MiB (limit 64 MiB)\n' "$(echo "$tree/1048576" | bc -l)" "$(echo "$carried/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
find "$carry" -type f -printf '  %10s bytes  %p\n'
[ "$total" -lt $(( 64 * 1048576 )) ] || { echo "error: over the 64 MiB the device tool carries"; exit 1; }

# Both apps start here and refuse CUDA with a typed error, not a crash: gpucheck exits 3, the bench 1 (2 is a bad command line).
fixture=tests/ShareGPT4V.Tests/Fixtures/oracle/hf_llama2vocab
expect_refusal() {
  local want_rc=$1; shift
  set +e
  local out rc
  out=$(env -u SHAREGPT4V_LIBTORCH_DIR "$@" 2>&1); rc=$?
  set -e
  if ! echo "$out" | grep -q "Device 'cuda:0' was requested but CUDA cannot be used" || [ "$rc" != "$want_rc" ]; then
    echo "error: expected a DeviceException (exit $want_rc) from $1, got exit $rc: $out"; exit 1
  fi
}
expect_refusal 3 "$apps/sharegpt4v-gpucheck" oracle --device cuda:0
expect_refusal 1 "$apps/sharegpt4v-bench" run --model "$fixture" --image "$fixture/image1.png" --device cuda:0
echo "no CUDA here: both apps refuse it with a DeviceException, as they should"

# Through an external CPU libtorch, as they will run on the GPU machine's: the oracle, and a short bench run.
lib=${LOCAL_LIBTORCH_DIR:-$(dotnet nuget locals global-packages -l | sed 's/^global-packages: *//')libtorch-cpu-linux-x64/2.10.0/runtimes/linux-x64/native}
if [ -f "$lib/libtorch_cpu.so" ]; then
  "$apps/sharegpt4v-gpucheck" oracle --device cpu --modes fp32 --libtorch-dir "$lib" --fixtures tests/ShareGPT4V.Tests/Fixtures | tail -5
  json=$("$apps/sharegpt4v-bench" run --model "$fixture" --image "$fixture/image1.png" --max-new-tokens 4 --skip-limits --threads 2 \
    --libtorch-dir "$lib" --json 2>/dev/null)
  echo "$json" | python3 -c "
import json, sys
r = json.load(sys.stdin)
assert r['device'] == 'cpu' and len(r['token_ids']) == 4 and r['decode_tokens_per_s'] > 0, r
print(f\"bench through the external libtorch: {r['libtorch'][:60]}...; decode {r['decode_tokens_per_s']:.0f} tokens/s on the tiny oracle model\")"
else
  echo "no CPU libtorch at '$lib' (set LOCAL_LIBTORCH_DIR): the runs through an external libtorch were skipped"
fi
echo "ready: run scripts/gpu/run.sh on the GPU machine with carry [\".gpu-carry\"]"

#!/usr/bin/env bash
# Prepares a GPU run, on a machine with the .NET SDK (not the GPU machine): fills .gpu-carry/ (ignored by git),
# which the device tool carries along with the working tree, then checks what can be checked without a GPU.
#
#   scripts/gpu/prepare.sh [TORCHSHARP_SOURCE]
#
# - .gpu-carry/gpucheck/: tools/ShareGPT4V.GpuCheck published self-contained, single-file, compressed and trimmed
#   (framework only), WITHOUT any libtorch: on the GPU machine it loads PyTorch's own libtorch.
# - .gpu-carry/bench/: samples/ShareGPT4V.Bench published the same way, when that project exists.
# - .gpu-carry/torchsharp-native.tar.gz: TorchSharp's src/Native at the TorchSharp version the repo uses, so the GPU
#   machine (no network) can rebuild the native glue against its libtorch. TORCHSHARP_SOURCE is a clone of TorchSharp's
#   public repository (a work tree or a bare git folder) or a folder holding src/Native; TORCHSHARP_REV picks the
#   commit (default c20b6a1c, the 0.107.0 release). Without it the GPU run can only use the packaged glue.
# - .gpu-carry/libLibTorchSharp.so: optional, a glue built by an earlier GPU run (its $OUT), to skip the build.
#
# Checks: the publishes carry no libtorch, everything that travels stays under the device tool's 64 MiB, the app
# starts and refuses CUDA with a DeviceException here, and, when LOCAL_LIBTORCH_DIR names a CPU libtorch folder
# (e.g. the libtorch-cpu-linux-x64 package's runtimes/linux-x64/native), the oracle passes through that external libtorch.
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=.gpu-carry
keep_glue=""
[ -f "$carry/libLibTorchSharp.so" ] && keep_glue=$(mktemp) && cp "$carry/libLibTorchSharp.so" "$keep_glue"
rm -rf "$carry/gpucheck" "$carry/bench" "$carry/torchsharp-native.tar.gz"
mkdir -p "$carry"
[ -n "$keep_glue" ] && mv "$keep_glue" "$carry/libLibTorchSharp.so"

publish() {
  dotnet publish "$1" -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true \
    -p:PublishTrimmed=true -p:TrimMode=partial -p:DebugType=none -p:GenerateDocumentationFile=false -o "$2" > "$2.log" 2>&1 \
    || { tail -20 "$2.log"; return 1; }
  rm -f "$2.log"
}
publish tools/ShareGPT4V.GpuCheck "$carry/gpucheck"
if [ -f samples/ShareGPT4V.Bench/ShareGPT4V.Bench.csproj ]; then
  publish samples/ShareGPT4V.Bench "$carry/bench" || echo "warning: the bench sample did not publish; the GPU run will skip it"
  # An app that references the CPU libtorch package would load it instead of the GPU machine's CUDA build.
  find "$carry/bench" -name 'libtorch_cpu.so' | grep -q . && { echo "warning: the bench publish carries libtorch_cpu.so: removed"; find "$carry/bench" -name 'libtorch*.so' -o -name 'libc10*.so' | xargs rm -f; }
fi
if find "$carry/gpucheck" -name 'libtorch*.so' -o -name 'libc10*.so' | grep -q .; then echo "error: the gpucheck publish carries libtorch"; exit 1; fi

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
du -sh "$carry"/* | sed 's/^/  /'
[ "$total" -lt $(( 64 * 1048576 )) ] || { echo "error: over the 64 MiB the device tool carries"; exit 1; }

# The app starts here and refuses CUDA with a typed error (exit code 3), not a crash.
set +e
out=$("$carry/gpucheck/sharegpt4v-gpucheck" oracle --device cuda:0 2>&1); rc=$?
set -e
echo "$out" | grep -q "DeviceException" && [ $rc = 3 ] || { echo "error: expected a DeviceException (exit 3), got exit $rc: $out"; exit 1; }
echo "no CUDA here: the app refuses with a DeviceException as it should"
if [ -n "${LOCAL_LIBTORCH_DIR:-}" ]; then
  "$carry/gpucheck/sharegpt4v-gpucheck" oracle --device cpu --modes fp32 --libtorch-dir "$LOCAL_LIBTORCH_DIR" \
    --fixtures tests/ShareGPT4V.Tests/Fixtures | tail -5
fi
echo "ready: run scripts/gpu/run.sh on the GPU machine with carry [\".gpu-carry\"]"

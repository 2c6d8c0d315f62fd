#!/usr/bin/env bash
# Builds TorchSharp's native glue against this machine's PyTorch (python3's torch) with CMake + ninja.
# Usage: build-libtorchsharp.sh SOURCE_ARCHIVE_OR_DIR OUTPUT_DIR
#   SOURCE: torchsharp-native.tar.gz made by prepare.sh (TorchSharp's src/Native at the TorchSharp version in use), or a folder
#           holding src/Native. OUTPUT_DIR receives libLibTorchSharp.so and build.log.
# A source file of an unused part (TorchScript, export, vision, data, FFT, ...) that no longer compiles against this
# libtorch is left out and named (its exports go missing); any other failure stops the build. Exit 0 when linked.
set -uo pipefail
src=$1; out=$2
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d)
log="$out/build.log"
if [ -d "$src" ]; then native="$src/src/Native"; else tar -xzf "$src" -C "$work" && native="$work/src/Native"; fi
[ -d "$native/LibTorchSharp" ] || { echo "no LibTorchSharp sources in $src" | tee -a "$log"; exit 1; }

read -r torch_dir abi < <(python3 -c "import os, torch; print(os.path.dirname(torch.__file__), int(torch._C._GLIBCXX_USE_CXX11_ABI))")
echo "torch: $torch_dir (cxx11 abi $abi), $(python3 -c 'import torch; print(torch.__version__)')" | tee -a "$log"

# Headers that newer libtorch dropped get a stand-in (c10::optional became std::optional).
compat="$work/compat"
if [ ! -f "$torch_dir/include/c10/util/Optional.h" ]; then
  mkdir -p "$compat/c10/util"
  printf '#pragma once\n#include <optional>\nnamespace c10 { using std::optional; using std::nullopt; using std::nullopt_t; using std::make_optional; using std::bad_optional_access; }\n' > "$compat/c10/util/Optional.h"
  echo "c10/util/Optional.h missing: using a stand-in" | tee -a "$log"
fi

here=$(cd "$(dirname "$0")" && pwd)
# TorchScript, export, vision, data loading, FFT, special functions, linear algebra, losses and optimisers: unused by
# the model code, so a file among these that no longer compiles may be left out.
optional="THSJIT.cpp THSExport.cpp THSVision.cpp THSData.cpp cifar10.cpp THSFFT.cpp THSSpecial.cpp THSLinearAlgebra.cpp THSLoss.cpp THSOptimizers.cpp"
excluded=""
for attempt in 1 2 3 4; do
  rm -rf "$work/build"
  cmake -S "$here/libtorchsharp" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DTORCHSHARP_NATIVE="$native" -DTORCH_DIR="$torch_dir" -DCXX11_ABI="$abi" -DEXCLUDED="$excluded" \
    -DCOMPAT_INCLUDE="$([ -d "$compat" ] && echo "$compat")" >> "$log" 2>&1 || { echo "cmake configure failed (see build.log)"; exit 1; }
  alog="$work/attempt$attempt.log"
  if cmake --build "$work/build" -j "$(nproc)" -- -k 0 > "$alog" 2>&1; then
    cat "$alog" >> "$log"
    cp "$work/build/libLibTorchSharp.so" "$out/"
    echo "built $out/libLibTorchSharp.so${excluded:+ without: $excluded}" | tee -a "$log"
    exit 0
  fi
  cat "$alog" >> "$log"
  failed=$(grep -oE 'FAILED: [^ ]*LibTorchSharp/[A-Za-z0-9_]+\.(cpp|c)\.o' "$alog" | sed -E 's#.*/##; s#\.o$##' | sort -u | tr '\n' ';')
  [ -n "$failed" ] || { echo "link or build failed with no failing source named (see build.log)"; tail -20 "$log"; exit 1; }
  # Only parts the model code never calls may go; anything else failing means this libtorch needs a newer TorchSharp.
  for f in ${failed//;/ }; do
    case " $optional " in *" $f "*) ;; *)
      echo "$f does not compile against this libtorch and the library cannot do without it:" | tee -a "$log"
      grep -E "error:" "$alog" | sort -u | head -10
      exit 1;;
    esac
  done
  echo "attempt $attempt: leaving out ${failed%;}" | tee -a "$log"
  grep -E 'error:' "$alog" | sort -u | head -10
  excluded="${excluded}${failed}"
done
echo "gave up after 4 attempts (see build.log)"; exit 1

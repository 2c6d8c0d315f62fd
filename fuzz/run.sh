#!/usr/bin/env bash
# Coverage-guided fuzzing of the checkpoint readers (and, on request, the config, tokenizer and image readers) with
# afl-fuzz and SharpFuzz. Not part of CI: it installs what it needs, builds the harness, instruments the library and
# runs each target for a number of executions, then prints execs, crashes, hangs and time per target.
#
#   fuzz/run.sh                         the four checkpoint targets, 100000 executions each
#   fuzz/run.sh --execs 5000 image      any targets (see: dotnet fuzz/out/bin/ShareGPT4V.Fuzz.dll)
#   fuzz/run.sh --mutate 20000          no afl-fuzz: the seeded mutation fuzzer, 20000 inputs per target
#
# Findings land in fuzz/out/findings/<target>/default/{crashes,hangs}; replay one with
#   dotnet fuzz/out/bin/ShareGPT4V.Fuzz.dll replay <target> tests/ShareGPT4V.Tests/Fixtures <file>
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/fuzz/out"
fixtures="$root/tests/ShareGPT4V.Tests/Fixtures"

execs=100000
mutate=0
timeout_ms=10000
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --execs) execs="$2"; shift 2 ;;
        --mutate) mutate="$2"; shift 2 ;;
        --timeout-ms) timeout_ms="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -eq 0 ] && targets=(safetensors sharded bin-zip bin-legacy)

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# 1. The harness, published to its own folder so that instrumenting it touches no other build output.
rm -rf "$out/bin"
dotnet publish "$root/fuzz/ShareGPT4V.Fuzz/ShareGPT4V.Fuzz.csproj" -c Release -o "$out/bin" -v quiet -nologo >/dev/null
harness=(dotnet "$out/bin/ShareGPT4V.Fuzz.dll")

if [ "$mutate" -gt 0 ]; then
    status=0
    for t in "${targets[@]}"; do "${harness[@]}" mutate "$t" "$fixtures" "$mutate" 1 || status=1; done
    exit $status
fi

# 2. Tools: afl-fuzz from the distribution, the SharpFuzz instrumenter as a local dotnet tool.
if ! command -v afl-fuzz >/dev/null; then
    echo "installing afl++"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends afl++ >/dev/null
fi
(cd "$root/fuzz" && dotnet tool restore >/dev/null)

# 3. Seeds: the oracle fixtures (small ones), per target. Written before instrumenting: instrumented code may only
#    run under afl-fuzz, which provides the coverage map it writes to.
rm -rf "$out/seeds"
"${harness[@]}" seeds "$fixtures" "$out/seeds" "${targets[@]}"

# 4. Instrument our library only (its dependencies are not under test).
(cd "$root/fuzz" && dotnet tool run sharpfuzz "$out/bin/ShareGPT4V.Core.dll" >/dev/null)

# 5. Fuzz. The harness runs inputs in a child process (SharpFuzz out-of-process mode), so a native crash in
#    libtorch is reported as a crash instead of ending the session. DOTNET_GCHeapHardLimit turns an unbounded managed
#    allocation into an OutOfMemoryException, which afl-fuzz records as a crash.
export AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
export DOTNET_GCHeapHardLimit=0x80000000
summary=()
for t in "${targets[@]}"; do
    findings="$out/findings/$t"
    rm -rf "$findings"; mkdir -p "$out/findings"
    echo "== $t: $execs executions"
    start=$(date +%s)
    afl-fuzz -i "$out/seeds/$t" -o "$findings" -E "$execs" -t "$timeout_ms" -m none -- \
        "${harness[@]}" afl "$t" "$fixtures" > "$out/afl-$t.log" 2>&1 || true
    stats="$findings/default/fuzzer_stats"
    if [ ! -f "$stats" ]; then
        echo "afl-fuzz did not start for $t; see $out/afl-$t.log"; tail -20 "$out/afl-$t.log"; exit 1
    fi
    get() { awk -F': *' -v k="$1" '$1 ~ "^"k" *$" {print $2}' "$stats"; }
    crashes=$(get saved_crashes); [ -z "$crashes" ] && crashes=$(get unique_crashes)
    hangs=$(get saved_hangs); [ -z "$hangs" ] && hangs=$(get unique_hangs)
    line=$(printf '%-12s execs %s  crashes %s  hangs %s  paths %s  time %ss  (%s execs/s)' \
        "$t" "$(get execs_done)" "$crashes" "$hangs" "$(get corpus_count)" "$(( $(date +%s) - start ))" "$(get execs_per_sec)")
    echo "$line"
    summary+=("$line")
done
echo
echo "== summary (afl++ $(afl-fuzz -h 2>&1 | grep -oE '\+\+[0-9.a-z]+' | head -1), findings in fuzz/out/findings)"
printf '%s\n' "${summary[@]}"

#!/usr/bin/env bash
# Load benchmark of sharegpt4v-server and llama.cpp's llama-server on the same GGUF files, one after the other in one
# script, each alone on the machine: load.py at 1, 4 and 16 concurrent text clients, then image clients.
#   scripts/serve/side_by_side.sh LLM.gguf MMPROJ.gguf IMAGE.png LLAMA_SERVER [ARGS...]
# LLAMA_SERVER [ARGS...] is how llama-server is started on this machine, including its -m/--mmproj arguments for the
# same two files (they differ where llama-server runs in a container or chroot); the script adds
# --host/--port/--threads/--parallel/--ctx-size. Environment: THREADS (2), SLOTS (8, ours: --max-batch-size),
# MAX_TOKENS (16), CLIENTS / REQUESTS (1,4,16 / 2,4,16), IMAGE_CLIENTS / IMAGE_REQUESTS (1,4 / 1,4).
set -euo pipefail
llm=${1:?usage: side_by_side.sh LLM.gguf MMPROJ.gguf IMAGE.png LLAMA_SERVER [ARGS...]}
mmproj=${2:?mmproj gguf}
image=${3:?image}
shift 3
[ $# -gt 0 ] || { echo "usage: side_by_side.sh LLM.gguf MMPROJ.gguf IMAGE.png LLAMA_SERVER [ARGS...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
threads=${THREADS:-2} slots=${SLOTS:-8} port=${PORT:-18510}
levels() { # name pid
  echo "== $1 text, $(date -u +%T), load average $(cut -d' ' -f1 /proc/loadavg)"
  python3 "$here/load.py" --url "http://127.0.0.1:$port" --model "$(basename "$llm" .gguf)" --server-pid "$2" \
    --clients "${CLIENTS:-1,4,16}" --requests "${REQUESTS:-2,4,16}" --max-tokens "${MAX_TOKENS:-16}"
  echo "== $1 image, $(date -u +%T), load average $(cut -d' ' -f1 /proc/loadavg)"
  python3 "$here/load.py" --url "http://127.0.0.1:$port" --model "$(basename "$llm" .gguf)" --server-pid "$2" \
    --clients "${IMAGE_CLIENTS:-1,4}" --requests "${IMAGE_REQUESTS:-1,4}" --max-tokens "${MAX_TOKENS:-16}" --image "$image"
}
wait_healthy() { # pid log
  for _ in $(seq 1 1200); do
    curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    kill -0 "$1" 2>/dev/null || { echo "the server exited; its log:" >&2; tail -20 "$2" >&2; exit 1; }
    sleep 0.5
  done
  echo "not healthy after 10 minutes" >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

dotnet build "$root/samples/ShareGPT4V.Server" -c Release -v q -nologo >/dev/null
log=${LOG_DIR:-/tmp}/sharegpt4v-side-by-side.log
dotnet "$root/samples/ShareGPT4V.Server/bin/Release/net10.0/sharegpt4v-server.dll" --model "$llm" --mmproj "$mmproj" \
  --template vicuna_v1 --urls "http://127.0.0.1:$port" --threads "$threads" --max-batch-size "$slots" \
  --max-tokens 256 --request-timeout 3600 > "$log" 2>&1 &
ours=$!
trap 'stop $ours' EXIT
wait_healthy $ours "$log"
levels sharegpt4v-server $ours
echo "   peak RSS $(awk '/VmHWM/ {print $2/1024 " MiB"}' /proc/$ours/status)"
stop $ours

log=${LOG_DIR:-/tmp}/llama-server-side-by-side.log
"$@" --host 127.0.0.1 --port "$port" --threads "$threads" --parallel "$slots" --ctx-size $((slots * 2048)) > "$log" 2>&1 &
theirs=$!
trap 'stop $theirs' EXIT
wait_healthy $theirs "$log"
levels llama-server $theirs
echo "   peak RSS $(awk '/VmHWM/ {print $2/1024 " MiB"}' /proc/$theirs/status)"
stop $theirs

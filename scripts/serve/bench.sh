#!/usr/bin/env bash
# Load benchmark of sharegpt4v-server: starts the server on MODEL, waits for /health, runs load.py at 1, 4 and 16
# concurrent clients (text prompts, then one level with an image), stops the server. Timings to be reported run alone:
#   scripts/serve/bench.sh MODEL [IMAGE]
set -euo pipefail
model=${1:?usage: bench.sh MODEL_DIR [IMAGE.png]}
image=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
port=${PORT:-18500}
dotnet build "$root/samples/ShareGPT4V.Server" -c Release -v q -nologo >/dev/null
dotnet "$root/samples/ShareGPT4V.Server/bin/Release/net10.0/sharegpt4v-server.dll" --model "$model" \
  --urls "http://127.0.0.1:$port" --threads "${THREADS:-2}" --max-tokens 256 --request-timeout 3600 > "${LOG:-/tmp/sharegpt4v-serve-bench.log}" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "the server exited; see the log" >&2; exit 1; }
  sleep 0.5
done
name=$(basename "$model")
python3 "$here/load.py" --url "http://127.0.0.1:$port" --model "$name" --server-pid $server \
  --clients "${CLIENTS:-1,4,16}" --requests "${REQUESTS:-3,8,16}" --max-tokens "${MAX_TOKENS:-32}"
if [ -n "$image" ]; then
  python3 "$here/load.py" --url "http://127.0.0.1:$port" --model "$name" --server-pid $server \
    --clients "${IMAGE_CLIENTS:-1,4}" --requests "${IMAGE_REQUESTS:-2,4}" --max-tokens "${MAX_TOKENS:-32}" --image "$image"
fi

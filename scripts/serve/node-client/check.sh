#!/usr/bin/env bash
# Another language's official OpenAI client against the server: installs the `openai` npm package (Node 18+ and the
# npm registry needed), starts sharegpt4v-server on MODEL, runs check.mjs, stops the server.
#   scripts/serve/node-client/check.sh [MODEL_DIR] [IMAGE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
model=${1:-$root/tests/ShareGPT4V.Tests/Fixtures/oracle/hf_llama2vocab}
image=${2:-$root/tests/ShareGPT4V.Tests/Fixtures/oracle/hf_llama2vocab/image1.png}
port=${PORT:-18530}
(cd "$here" && npm install --no-audit --no-fund --silent)
dotnet build "$root/samples/ShareGPT4V.Server" -c Release -v q -nologo >/dev/null
dotnet "$root/samples/ShareGPT4V.Server/bin/Release/net10.0/sharegpt4v-server.dll" --model "$model" \
  --urls "http://127.0.0.1:$port" > "${LOG:-/tmp/sharegpt4v-node-client.log}" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "the server exited; see the log" >&2; exit 1; }
  sleep 0.5
done
URL="http://127.0.0.1:$port" IMG="$image" node "$here/check.mjs"

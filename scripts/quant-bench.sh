#!/bin/bash
# Quantized weights on the benchmark-size model: the bench at fp32, q8_0 and q4_0 (quantized at load from the same
# checkpoint), then the quality of q8_0 and q4_0 against fp32 (top-1 agreement, mean KL over 512 teacher-forced
# tokens). Run it alone on the machine: scripts/quant-bench.sh MODEL IMAGE OUT
set -euo pipefail
MODEL=${1:?model folder}; IMAGE=${2:?image}; OUT=${3:-quant-bench}
THREADS=${THREADS:-2}; TOKENS=${TOKENS:-64}
mkdir -p "$OUT"
dotnet build samples/ShareGPT4V.Bench -c Release -v q -nologo >/dev/null
B=samples/ShareGPT4V.Bench/bin/Release/net10.0/sharegpt4v-bench
echo "== decode kernel alone (widening in registers, then int8 dot products)" >&2
uptime > "$OUT/kernels.txt"
$B kernels --threads $THREADS >> "$OUT/kernels.txt"
$B kernels --threads $THREADS >> "$OUT/kernels.txt"
uptime >> "$OUT/kernels.txt"
for d in fp32 q8_0 q4_0; do
  echo "== run $d" >&2
  $B run --model "$MODEL" --image "$IMAGE" --dtype $d --threads $THREADS --max-new-tokens $TOKENS --repeat 2 --json \
    2> "$OUT/run-$d.log" | tail -1 > "$OUT/run-$d.json"
done
for d in q8_0 q4_0; do
  echo "== quality $d" >&2
  $B quality --model "$MODEL" --dtype $d --tokens 512 --threads $THREADS 2> "$OUT/quality-$d.log" | tail -1 > "$OUT/quality-$d.json"
done
cat "$OUT/kernels.txt"
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
print(f"{'dtype':6} {'decode tok/s':>12} {'prefill ms':>10} {'vision ms':>9} {'peak RSS MB':>11} {'weights MB':>10} {'RSS/(w+kv)':>10} {'bytes/token':>11} {'bw share':>8} {'other cpu %':>11}")
for d in ['fp32', 'q8_0', 'q4_0']:
    r = json.load(open(os.path.join(out, f'run-{d}.json')))
    bw = r.get('decode_bandwidth_ratio')
    print(f"{d:6} {r['decode_tokens_per_s']:12.2f} {r['prefill_ms']:10.0f} {r['vision_ms']:9.0f} {r['peak_rss_mb']:11.0f} {r['weights_mb']:10.0f} "
          f"{r['peak_rss_over_weights_kv']:10.2f} {r['decode_bytes_per_token']/1e9:10.2f}G {('%.2f' % bw) if bw else '-':>8} "
          f"{r.get('other_cpu_decode_pct')}")
for d in ['q8_0', 'q4_0']:
    q = json.load(open(os.path.join(out, f'quality-{d}.json')))
    print(f"quality {d}: top-1 agreement {q['top1_agreement']*100:.1f} %, mean KL {q['mean_kl']:.3g}, max KL {q['max_kl']:.3g}")
PY

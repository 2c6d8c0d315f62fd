#!/usr/bin/env python3
"""Prints the figures of a GPU run (the files run.sh wrote into one folder) as one short report, also kept as summary.txt."""
import json, os, sys

out = sys.argv[1] if len(sys.argv) > 1 else "."


def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return None


def load_lines(name):
    try:
        return [json.loads(l) for l in open(os.path.join(out, name)) if l.strip()]
    except (OSError, ValueError):
        return []


def f(v, fmt=".1f"):
    return "-" if v is None else format(v, fmt)


gib = lambda b: f"{b / 2**30:.2f} GiB" if b is not None else "-"
mib_gib = lambda m: f"{m / 1024:.2f} GiB" if m is not None else "-"
lines = []
native = load("native.json")
if native:
    lines.append(f"libtorch: {native.get('libtorch_version')} from {os.path.dirname(native.get('libtorch_cpu') or '') or '-'}; "
                 f"CUDA {'available' if native.get('cuda_available') else 'NOT available: ' + str(native.get('problem'))}")
    lines.append(f"glue: {native.get('libtorchsharp')} (TorchSharp {native.get('torchsharp_version')}, built for {native.get('torchsharp_built_for')})")
    for d in native.get("devices", []):
        lines.append(f"device {d['index']}: {d['name']}, compute {d['compute_capability']}, {gib(d['free_bytes'])} free of {gib(d['total_bytes'])}")
oracle = load("oracle.json")
if oracle and "table" in oracle:
    lines.append("oracle (max |diff| against the transformers float32 goldens; fp32 tolerance 1e-4):")
    lines += ["  " + l for l in oracle["table"].split("\n")]
elif oracle:
    lines.append(f"oracle: {oracle.get('error')}: {oracle.get('message')}")

net = sorted(load_lines("bench-dotnet.jsonl"), key=lambda r: r["batch"])
hf = load("bench-hf.json")
hf_rows = {r["batch"]: r for r in (hf or {}).get("runs", [])}
if net:
    n0 = net[0]
    lines.append(f".NET bench: {n0.get('placement')}")
    lines.append(f"  {n0.get('libtorch')}; prompt {n0.get('prompt_tokens')} tokens, {n0.get('new_tokens')} new tokens, "
                 f"vision and prefill medians of {n0.get('repeat')}")
    for r in net:
        bw = "read bandwidth" if r.get("device") == "cpu" else "device copy bandwidth (read + write)"
        lines.append(f"  batch {r['batch']}: load {f(r.get('load_s'), '.2f')} s; {bw} {f(r.get('bandwidth_gbs'))} GB/s, GEMM {f(r.get('gemm_gflops'), '.0f')} GFLOP/s ({r.get('gemm_shape')}); device memory before load "
                     f"{mib_gib(r.get('device_mem_before_mb'))}, peak {mib_gib(r.get('device_mem_peak_mb'))} = "
                     f"{f(r.get('device_peak_over_weights_kv'), '.2f')} x (weights {mib_gib(r.get('weights_mb'))} + KV cache "
                     f"{mib_gib(r.get('kv_cache_mb'))}); host peak RSS {mib_gib(r.get('peak_rss_mb'))}")
    lines.append(f"{'batch':>5} {'':>5} {'vision ms':>10} {'prefill ms':>11} {'TTFT ms':>9} {'decode tok/s':>13} {'ms/step':>8} "
                 f"{'roofline tok/s':>15} {'of roofline':>12} {'peak device mem':>16} {'same ids':>9}")
    for r in net:
        ratio = r.get("decode_bandwidth_ratio")
        lines.append(f"{r['batch']:>5} {'.NET':>5} {f(r['vision_ms']):>10} {f(r['prefill_ms']):>11} {f(r.get('ttft_ms'), '.0f'):>9} "
                     f"{f(r['decode_tokens_per_s']):>13} {f(r.get('decode_step_ms_median'), '.2f'):>8} "
                     f"{f(r.get('decode_roofline_tokens_per_s')):>15} {(f(ratio * 100, '.0f') + '%') if ratio else '-':>12} "
                     f"{mib_gib(r.get('device_mem_peak_mb')):>16} {'':>9}")
        h = hf_rows.get(r["batch"])
        if h:
            lines.append(f"{'':>5} {'HF':>5} {f(h['vision_ms']):>10} {f(h['prefill_ms']):>11} {'':>9} {f(h['decode_tokens_per_s']):>13} "
                         f"{f(h.get('decode_step_ms_median'), '.2f'):>8} {'':>15} {'':>12} {gib(h.get('peak_reserved_bytes')):>16} "
                         f"{str(h.get('greedy_prefix_matching_dotnet', '-')) + '/' + str(len(h.get('token_ids', []))):>9}")
    lines.append("peak device mem: .NET = the driver's reading for the whole device (CUDA context and libtorch's cache included); "
                 "HF = torch.cuda.max_memory_reserved. roofline = the measured bandwidth over the bytes a decode step reads (weights + KV cache).")
    if hf:
        lines.append(f"HF: transformers {hf.get('transformers')}, torch {hf.get('torch')}, {hf.get('dtype')}, attention "
                     f"{hf.get('attn_implementation')}, weights {hf.get('weights')}; same ids = leading greedy ids equal to the .NET run's")
else:
    lines.append(".NET bench: no result (see the bench's log in logs.tar.gz)")
text = "\n".join(lines)
print(text)
open(os.path.join(out, "summary.txt"), "w").write(text + "\n")

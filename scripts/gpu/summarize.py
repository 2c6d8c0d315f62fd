#!/usr/bin/env python3
"""Prints the figures of a GPU run (the JSON files run.sh wrote into one folder) as one short report."""
import json, os, sys

out = sys.argv[1] if len(sys.argv) > 1 else "."


def load(name):
    p = os.path.join(out, name)
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None


gib = lambda b: f"{b / 2**30:.2f} GiB" if b is not None else "-"
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
net, hf = load("bench-dotnet.json"), load("bench-hf.json")
if net and "runs" in net:
    lines.append(f".NET bench: {net.get('placement')}; load {net.get('load_s', 0):.1f} s, host anonymous peak during load "
                 f"{gib(net.get('load_peak_host_anon_bytes'))} for {gib(net.get('weight_bytes'))} of weights")
    bw = net.get("copy_bandwidth_bytes_per_s") or 0
    lines.append(f"measured copy bandwidth {bw / 1e12:.2f} TB/s; device memory in use (driver, whole GPU): before load "
                 f"{gib(net.get('device_used_before_load_bytes'))}, peak {gib(net.get('device_used_peak_bytes'))}, after dispose "
                 f"{gib(net.get('device_used_after_dispose_bytes'))}")
    hdr = f"{'batch':>5} {'':>6} {'vision ms':>10} {'prefill ms':>11} {'tok/s/row':>10} {'tok/s all':>10} {'roofline/row':>13} {'peak mem':>10} {'greedy=':>8}"
    lines.append(hdr)
    hf_rows = {r["batch"]: r for r in (hf or {}).get("runs", [])}
    for r in net["runs"]:
        lines.append(f"{r['batch']:>5} {'.NET':>6} {r['vision_ms']:>10.1f} {r['prefill_ms']:>11.1f} {r['decode_tokens_per_s_per_row']:>10.1f} "
                     f"{r['decode_tokens_per_s_total']:>10.1f} {r['roofline_tokens_per_s_per_row']:>13.1f} {gib(net.get('device_used_peak_bytes')):>10} {'':>8}")
        h = hf_rows.get(r["batch"])
        if h:
            lines.append(f"{'':>5} {'HF':>6} {h['vision_ms']:>10.1f} {h['prefill_ms']:>11.1f} {h['decode_tokens_per_s_per_row']:>10.1f} "
                         f"{h['decode_tokens_per_s_total']:>10.1f} {'':>13} {gib(h['peak_reserved_bytes']):>10} "
                         f"{h.get('greedy_prefix_matching_dotnet', '-')!s:>8}")
    if hf:
        lines.append(f"HF: transformers {hf.get('transformers')}, torch {hf.get('torch')}, attention {hf.get('attn_implementation')}; "
                     "peak mem = torch.cuda.max_memory_reserved; greedy= is how many leading ids equal the .NET run's")
elif net:
    lines.append(f".NET bench: {net.get('error')}: {net.get('message')}")
text = "\n".join(lines)
print(text)
open(os.path.join(out, "summary.txt"), "w").write(text + "\n")

#!/usr/bin/env python3
"""Cut a llava-hf checkpoint down to its first N LLaMA layers (the rest of the model as it is), for training
benchmarks on the real dimensions without the whole LLM. Usage: make_small_llava.py SRC_DIR OUT_DIR N_LAYERS"""
import json, os, re, shutil, struct, sys

src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(out, exist_ok=True)
cfg = json.load(open(os.path.join(src, "config.json")))
cfg["text_config"]["num_hidden_layers"] = n
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
for f in os.listdir(src):
    if f.endswith(".json") and f not in ("config.json", "model.safetensors.index.json") or f == "tokenizer.model":
        shutil.copy(os.path.join(src, f), os.path.join(out, f))

def tensors(path):
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    for name, info in header.items():
        yield name, info, path, 8 + size

keep = []
files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
layer = re.compile(r"language_model\.model\.layers\.(\d+)\.")
for f in files:
    for name, info, path, base in tensors(os.path.join(src, f)):
        m = layer.search(name)
        if m and int(m.group(1)) >= n:
            continue
        keep.append((name, info, path, base))

header, offset = {}, 0
for name, info, _, _ in keep:
    length = info["data_offsets"][1] - info["data_offsets"][0]
    header[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + length]}
    offset += length
header["__metadata__"] = {"format": "pt"}
blob = json.dumps(header).encode()
blob += b" " * ((8 - len(blob) % 8) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as o:
    o.write(struct.pack("<Q", len(blob)))
    o.write(blob)
    for name, info, path, base in keep:
        a, b = info["data_offsets"]
        with open(path, "rb") as fh:
            fh.seek(base + a)
            remaining = b - a
            while remaining:
                chunk = fh.read(min(remaining, 64 << 20))
                o.write(chunk)
                remaining -= len(chunk)
print(f"wrote {len(keep)} tensors, {offset / 1e9:.2f} GB, {n} LLaMA layers")

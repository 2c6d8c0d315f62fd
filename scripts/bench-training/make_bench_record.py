#!/usr/bin/env python3
"""Writes bench.json for the training benchmark (docs/benchmarks-training.md): one LLaVA-format record, one image and a
long answer (one sentence repeated), 1,074 tokens with the LLaMA-2 tokenizer and the vicuna_v1 template.
Usage: make_bench_record.py OUT_DIR IMAGE   (the image is copied beside bench.json as image1.png)"""
import json, os, shutil, sys

out, image = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
shutil.copy(image, os.path.join(out, "image1.png"))
answer = " ".join(["The picture shows a wide street with tall buildings on both sides, cars parked along the curb, "
                   "and people walking under trees in the warm evening light."] * 14)
record = {"id": "bench-0", "image": "image1.png", "conversations": [
    {"from": "human", "value": "<image>\nDescribe this image in detail."}, {"from": "gpt", "value": answer}]}
json.dump([record], open(os.path.join(out, "bench.json"), "w"))

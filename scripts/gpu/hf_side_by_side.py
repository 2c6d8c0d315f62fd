#!/usr/bin/env python3
"""transformers on the same GPU, weights and inputs as the .NET bench: vision, prefill and greedy decode timings.

Reads the exact input ids and pixel values the .NET bench used (its --dump-inputs file), runs
LlavaForConditionalGeneration (eager attention as configured by default, DynamicCache) at each batch size,
takes the median of --repeat runs after a warm-up, and compares the greedy ids of batch 1 with the .NET run.
Writes one JSON file; prints a short table.
"""
import argparse, json, statistics, sys, time

import torch
from safetensors.torch import load_file
import transformers
from transformers import LlavaForConditionalGeneration


def sync():
    torch.cuda.synchronize()


def image_features(model, pixels):
    # The feature path differs between transformers versions; the result is only timed.
    for owner in (model, getattr(model, "model", None)):
        fn = getattr(owner, "get_image_features", None)
        if fn is None:
            continue
        try:
            return fn(pixel_values=pixels, vision_feature_layer=-2, vision_feature_select_strategy="default")
        except TypeError:
            return fn(pixels)
    raise RuntimeError("no get_image_features on this transformers version")


KEEP = {"logits_to_keep": 1}  # only the last position's logits, as the .NET pipeline computes (older versions: all)


def forward(model, **kw):
    global KEEP
    try:
        return model(**kw, **KEEP)
    except TypeError:
        KEEP = {}
        return model(**kw)


def run_once(model, ids, pixels, max_new):
    mask = torch.ones_like(ids)
    sync(); t0 = time.perf_counter()
    image_features(model, pixels)
    sync(); t1 = time.perf_counter()
    out = forward(model, input_ids=ids, pixel_values=pixels, attention_mask=mask, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1)
    sync(); t2 = time.perf_counter()
    past = out.past_key_values
    tokens = [nxt]
    for _ in range(max_new - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = forward(model, input_ids=nxt[:, None], past_key_values=past, attention_mask=mask, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
        tokens.append(nxt)
    sync(); t3 = time.perf_counter()
    ids_out = torch.stack(tokens, 1)[0].tolist()
    # The forward pass runs the vision tower again: prefill without it is the difference.
    return {"vision_ms": (t1 - t0) * 1e3, "vision_plus_prefill_ms": (t2 - t1) * 1e3,
            "prefill_ms": (t2 - t1 - (t1 - t0)) * 1e3, "decode_s": t3 - t2, "ids": ids_out}


def copy_bandwidth():
    n = 1 << 30
    src = torch.randn(n, dtype=torch.float16, device="cuda"); dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        sync(); t = time.perf_counter(); dst.copy_(src); sync(); times.append(time.perf_counter() - t)
    del src, dst
    torch.cuda.empty_cache()
    return 2.0 * n * 2 / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--dotnet-json")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[a.dtype]
    result = {"transformers": transformers.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name(0),
              "dtype": a.dtype, "max_new_tokens": a.max_new_tokens}
    result["copy_bandwidth_bytes_per_s"] = copy_bandwidth()

    t = time.perf_counter()
    try:
        model = LlavaForConditionalGeneration.from_pretrained(a.model, dtype=dtype)
    except TypeError:
        model = LlavaForConditionalGeneration.from_pretrained(a.model, torch_dtype=dtype)
    model = model.to("cuda").eval()
    sync()
    result["load_s"] = time.perf_counter() - t
    result["attn_implementation"] = getattr(model.config, "_attn_implementation", None)

    inputs = load_file(a.inputs)
    ids1 = inputs["input_ids"].to("cuda")
    pix1 = inputs["pixel_values"].to("cuda", dtype)
    dotnet = json.load(open(a.dotnet_json)) if a.dotnet_json else None
    rows = []
    with torch.inference_mode():
        for b in [int(x) for x in a.batches.split(",")]:
            ids, pix = ids1.repeat(b, 1), pix1.repeat(b, 1, 1, 1)
            run_once(model, ids, pix, min(8, a.max_new_tokens))  # warm-up
            torch.cuda.reset_peak_memory_stats()
            runs = [run_once(model, ids, pix, a.max_new_tokens) for _ in range(a.repeat)]
            med = lambda k: statistics.median(r[k] for r in runs)
            per_row = (a.max_new_tokens - 1) / med("decode_s")
            row = {"batch": b, "prompt_tokens": ids.shape[1], "vision_ms": med("vision_ms"), "prefill_ms": med("prefill_ms"),
                   "vision_plus_prefill_ms": med("vision_plus_prefill_ms"), "decode_s": med("decode_s"),
                   "decode_tokens_per_s_per_row": per_row, "decode_tokens_per_s_total": per_row * b,
                   "peak_allocated_bytes": torch.cuda.max_memory_allocated(), "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                   "greedy_ids_row0": runs[0]["ids"]}
            if dotnet:
                theirs = next((r for r in dotnet.get("runs", []) if r["batch"] == b), None)
                if theirs:
                    mine, other = runs[0]["ids"], theirs["greedy_ids_row0"]
                    same = 0
                    while same < min(len(mine), len(other)) and mine[same] == other[same]:
                        same += 1
                    row["greedy_prefix_matching_dotnet"] = same
            rows.append(row)
    result["runs"] = rows
    json.dump(result, open(a.json, "w"), indent=1)
    print(f"transformers {transformers.__version__} / torch {torch.__version__} on {result['device']}, {a.dtype}, "
          f"attention {result['attn_implementation']}, copy {result['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s")
    for r in rows:
        print(f"batch {r['batch']}: vision {r['vision_ms']:.1f} ms, prefill {r['prefill_ms']:.1f} ms, "
              f"decode {r['decode_tokens_per_s_per_row']:.1f} tok/s/row, peak allocated {r['peak_allocated_bytes'] / 2**30:.2f} GiB"
              + (f", greedy ids equal to .NET for the first {r['greedy_prefix_matching_dotnet']}" if "greedy_prefix_matching_dotnet" in r else ""))


if __name__ == "__main__":
    sys.exit(main())

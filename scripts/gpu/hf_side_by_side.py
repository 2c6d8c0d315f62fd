#!/usr/bin/env python3
"""transformers on the same device, weights and inputs as the .NET bench: vision, prefill and greedy decode timings.

The model is the bench's make-checkpoint folder (llava-hf layout, the transformers 4.36-4.51 weight names:
language_model.model.*, language_model.lm_head.*, vision_tower.*, multi_modal_projector.*). transformers 4.52 and
later name them model.language_model.*, lm_head.*, model.vision_tower.*, model.multi_modal_projector.* and rename old
checkpoints while loading; the load is checked (no missing, unexpected or mis-shaped weight), and where the renaming did
not happen the weights are renamed here and loaded strictly, so both sides always run the very same weights.

Reads the exact input ids and pixel values of one row that the .NET bench used (its --dump-inputs file), runs
LlavaForConditionalGeneration (its default attention, DynamicCache) at each batch size: the median of --repeat runs
after a warm-up, decode steps each waiting for the device (as the .NET bench's, whose ids come back every step), the
decode rate from the median step after --warmup-tokens, as the bench computes it. Compares the greedy ids of row 0
with the .NET run's of the same batch. Writes one JSON file; prints a short table.
"""
import argparse, json, statistics, sys, time

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}

# Legacy (transformers <= 4.51, what the bench writes) and current (>= 4.52) prefixes of a llava-hf checkpoint.
PREFIXES = [
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
]


def rename_for(model_keys, checkpoint_keys):
    """Maps each checkpoint name to the model's name for it (same name, or the other layout's); returns (mapping, unmatched)."""
    model_keys = set(model_keys)
    mapping, unmatched = {}, []
    for key in checkpoint_keys:
        candidates = [key]
        for old, new in PREFIXES:
            if key.startswith(old):
                candidates.append(new + key[len(old):])
            if key.startswith(new):
                candidates.append(old + key[len(new):])
        target = next((c for c in candidates if c in model_keys), None)
        if target is None:
            unmatched.append(key)
        else:
            mapping[key] = target
    return mapping, unmatched


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup-tokens", type=int, default=3)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--dotnet-json", help="the bench's JSON lines (one per batch), to compare greedy ids")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    import glob, os
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    device = torch.device(a.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, DTYPES[a.dtype])

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    result = {"transformers": transformers.__version__, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(device) if cuda else "cpu", "dtype": DTYPES[a.dtype],
              "max_new_tokens": a.max_new_tokens, "repeat": a.repeat}

    t = time.perf_counter()
    try:
        model, info = LlavaForConditionalGeneration.from_pretrained(a.model, dtype=dtype, output_loading_info=True)
    except TypeError:  # transformers before "dtype" replaced "torch_dtype"
        model, info = LlavaForConditionalGeneration.from_pretrained(a.model, torch_dtype=dtype, output_loading_info=True)
    problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        # Randomly initialised weights would make a different model: load the checkpoint's own, renamed, strictly.
        state = {}
        for f in sorted(glob.glob(os.path.join(a.model, "*.safetensors"))):
            state.update(load_file(f))
        mapping, unmatched = rename_for(model.state_dict().keys(), state.keys())
        if unmatched:
            raise SystemExit(f"checkpoint weights transformers has no place for: {unmatched[:10]} ({len(unmatched)} in all)")
        model.load_state_dict({mapping[k]: v.to(dtype) for k, v in state.items()}, strict=True)
        result["weights"] = f"renamed here and loaded strictly (from_pretrained reported {sum(map(len, problems.values()))} problems: " \
                            + ", ".join(f"{k} {len(v)}" for k, v in problems.items() if v) + ")"
        del state
    else:
        result["weights"] = "from_pretrained, every weight matched"
    model = model.to(device).eval()
    sync()
    result["load_s"] = time.perf_counter() - t
    result["attn_implementation"] = getattr(model.config, "_attn_implementation", None)

    keep = {"logits_to_keep": 1}  # only the last position's logits, as the .NET pipeline computes (older versions: all)

    def forward(**kw):
        nonlocal keep
        try:
            return model(**kw, **keep)
        except TypeError:
            keep = {}
            return model(**kw)

    def image_features(pixels):
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

    def run_once(ids, pixels, max_new):
        mask = torch.ones_like(ids)
        sync(); t0 = time.perf_counter()
        image_features(pixels)
        sync(); t1 = time.perf_counter()
        out = forward(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1)
        sync(); t2 = time.perf_counter()
        past = out.past_key_values
        tokens, steps = [nxt], []
        for _ in range(max_new - 1):
            s = time.perf_counter()
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = forward(input_ids=nxt[:, None], past_key_values=past, attention_mask=mask, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1)
            nxt.tolist()  # the ids come back every step, as a streaming generator's do
            steps.append(time.perf_counter() - s)
            tokens.append(nxt)
        sync(); t3 = time.perf_counter()
        # The forward pass runs the vision tower again: prefill without it is the difference.
        return {"vision_ms": (t1 - t0) * 1e3, "vision_plus_prefill_ms": (t2 - t1) * 1e3, "prefill_ms": (t2 - t1 - (t1 - t0)) * 1e3,
                "decode_s": t3 - t2, "steps": steps, "ids": torch.stack(tokens, 1)[0].tolist()}

    inputs = load_file(a.inputs)
    ids1 = inputs["input_ids"].to(device)
    pix1 = inputs["pixel_values"].to(device, dtype)
    dotnet = {}
    if a.dotnet_json and os.path.exists(a.dotnet_json):
        for line in open(a.dotnet_json):
            if line.strip():
                r = json.loads(line)
                dotnet[r["batch"]] = r
    rows = []
    with torch.inference_mode():
        for b in [int(x) for x in a.batches.split(",")]:
            ids, pix = ids1.repeat(b, 1), pix1.repeat(b, 1, 1, 1)
            run_once(ids, pix, min(8, a.max_new_tokens))  # warm-up: kernels, cuBLAS handles
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            runs = [run_once(ids, pix, a.max_new_tokens) for _ in range(a.repeat)]
            med = lambda k: statistics.median(r[k] for r in runs)
            step = statistics.median(s for r in runs for s in r["steps"][a.warmup_tokens:] or r["steps"])
            row = {"batch": b, "prompt_tokens": ids.shape[1], "vision_ms": med("vision_ms"), "prefill_ms": med("prefill_ms"),
                   "vision_plus_prefill_ms": med("vision_plus_prefill_ms"), "decode_s": med("decode_s"),
                   "decode_step_ms_median": step * 1e3, "decode_tokens_per_s": b / step,
                   "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
                   "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
                   "token_ids": runs[0]["ids"]}
            if b in dotnet:
                row["greedy_prefix_matching_dotnet"] = common_prefix(runs[0]["ids"], dotnet[b].get("token_ids", []))
            rows.append(row)
    result["runs"] = rows
    json.dump(result, open(a.json, "w"), indent=1)
    print(f"transformers {transformers.__version__} / torch {torch.__version__} on {result['device']}, {result['dtype']}, "
          f"attention {result['attn_implementation']}; weights: {result['weights']}")
    for r in rows:
        print(f"batch {r['batch']}: vision {r['vision_ms']:.1f} ms, prefill {r['prefill_ms']:.1f} ms, "
              f"decode {r['decode_tokens_per_s']:.1f} tokens/s ({r['decode_step_ms_median']:.2f} ms/step)"
              + (f", peak allocated {r['peak_allocated_bytes'] / 2**30:.2f} GiB" if r["peak_allocated_bytes"] else "")
              + (f", greedy ids equal to .NET for the first {r['greedy_prefix_matching_dotnet']}" if "greedy_prefix_matching_dotnet" in r else ""))


if __name__ == "__main__":
    sys.exit(main())

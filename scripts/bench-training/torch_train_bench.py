#!/usr/bin/env python3
"""Training-step benchmark of a llava-hf checkpoint in plain PyTorch (eager attention, as transformers runs on
torch 1.13), the finetune stage: vision tower frozen, projector and LLaMA trained with AdamW, clipping at 1.0.
One example per step: one image (576 tokens on CLIP-L/336) and TEXT text tokens, SUPERVISED of them labelled.
Prints one JSON line per step (seconds, tokens/s) and the process's peak RSS.
With --autocast, the forward (vision, projector, LLaMA, logits) runs under torch.autocast("cpu", torch.bfloat16).
Usage: torch_train_bench.py MODEL_DIR --text N --supervised N [--steps 4] [--threads 2] [--checkpointing] [--autocast]"""
import argparse, json, math, os, resource, struct, sys, time
import numpy as np
import torch
import torch.utils.checkpoint
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--text", type=int, required=True)
ap.add_argument("--supervised", type=int, required=True)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--checkpointing", action="store_true")
ap.add_argument("--autocast", action="store_true")
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

cfg = json.load(open(os.path.join(args.model, "config.json")))
tc, vc = cfg["text_config"], cfg["vision_config"]

def load(path):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32"
        a, b = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).reshape(info["shape"]).copy())
    return out

W = load(os.path.join(args.model, "model.safetensors"))
trainable = {k: v for k, v in W.items() if not k.startswith("vision_tower.")}
for v in trainable.values():
    v.requires_grad_(True)

def clip_features(pixels):
    p = "vision_tower.vision_model."
    h = F.conv2d(pixels, W[p + "embeddings.patch_embedding.weight"], stride=vc["patch_size"]).flatten(2).transpose(1, 2)
    cls = W[p + "embeddings.class_embedding"].expand(h.shape[0], 1, -1)
    h = torch.cat([cls, h], 1) + W[p + "embeddings.position_embedding.weight"].unsqueeze(0)
    h = F.layer_norm(h, (vc["hidden_size"],), W[p + "pre_layrnorm.weight"], W[p + "pre_layrnorm.bias"], vc["layer_norm_eps"])
    heads = vc["num_attention_heads"]; d = vc["hidden_size"] // heads
    for i in range(vc["num_hidden_layers"] + cfg.get("vision_feature_layer", -2) + 1):
        q = p + f"encoder.layers.{i}."
        x = F.layer_norm(h, (vc["hidden_size"],), W[q + "layer_norm1.weight"], W[q + "layer_norm1.bias"], vc["layer_norm_eps"])
        def proj(n): return F.linear(x, W[q + f"self_attn.{n}.weight"], W[q + f"self_attn.{n}.bias"]).view(x.shape[0], -1, heads, d).transpose(1, 2)
        att = torch.softmax(proj("q_proj") * d ** -0.5 @ proj("k_proj").transpose(-1, -2), -1) @ proj("v_proj")
        h = h + F.linear(att.transpose(1, 2).reshape(x.shape), W[q + "self_attn.out_proj.weight"], W[q + "self_attn.out_proj.bias"])
        x = F.layer_norm(h, (vc["hidden_size"],), W[q + "layer_norm2.weight"], W[q + "layer_norm2.bias"], vc["layer_norm_eps"])
        x = F.linear(x, W[q + "mlp.fc1.weight"], W[q + "mlp.fc1.bias"])
        x = x * torch.sigmoid(1.702 * x) if vc.get("hidden_act", "quick_gelu") == "quick_gelu" else F.gelu(x)
        h = h + F.linear(x, W[q + "mlp.fc2.weight"], W[q + "mlp.fc2.bias"])
    return h[:, 1:]

def rms(x, w):
    v = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(v + tc["rms_norm_eps"]))

def rope(t):
    d = tc["head_dim"]
    inv = 1.0 / (tc["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
    f = torch.arange(t).float()[:, None] * inv[None]
    e = torch.cat([f, f], -1)
    return e.cos(), e.sin()

def rot(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

def layer(i, h, cos, sin, mask):
    p = f"language_model.model.layers.{i}."
    b, t, _ = h.shape
    nh, kv, d = tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    x = rms(h, trainable[p + "input_layernorm.weight"])
    q = F.linear(x, trainable[p + "self_attn.q_proj.weight"]).view(b, t, nh, d).transpose(1, 2)
    k = F.linear(x, trainable[p + "self_attn.k_proj.weight"]).view(b, t, kv, d).transpose(1, 2)
    v = F.linear(x, trainable[p + "self_attn.v_proj.weight"]).view(b, t, kv, d).transpose(1, 2)
    q, k = rot(q, cos, sin), rot(k, cos, sin)
    k = k.repeat_interleave(nh // kv, 1); v = v.repeat_interleave(nh // kv, 1)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, -1) @ v
    h = h + F.linear(att.transpose(1, 2).reshape(b, t, nh * d), trainable[p + "self_attn.o_proj.weight"])
    x = rms(h, trainable[p + "post_attention_layernorm.weight"])
    x = F.silu(F.linear(x, trainable[p + "mlp.gate_proj.weight"])) * F.linear(x, trainable[p + "mlp.up_proj.weight"])
    return h + F.linear(x, trainable[p + "mlp.down_proj.weight"])

n_img = (vc["image_size"] // vc["patch_size"]) ** 2
T = n_img + args.text
vocab = min(tc["vocab_size"], 32000)
ids = torch.randint(3, vocab, (1, args.text))
labels = torch.full((1, T), -100)
labels[0, T - args.supervised:] = torch.randint(3, vocab, (args.supervised,))
pixels = torch.randn(1, 3, vc["image_size"], vc["image_size"])
params = list(trainable.values())
opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
cos, sin = rope(T)

for step in range(1, args.steps + 1):
    t0 = time.perf_counter()
    ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast)
    ac.__enter__()
    with torch.no_grad():
        feats = clip_features(pixels)
    img = F.linear(F.gelu(F.linear(feats, trainable["multi_modal_projector.linear_1.weight"], trainable["multi_modal_projector.linear_1.bias"])),
                   trainable["multi_modal_projector.linear_2.weight"], trainable["multi_modal_projector.linear_2.bias"])
    emb = F.embedding(ids, trainable["language_model.model.embed_tokens.weight"])
    h = torch.cat([emb[:, :1], img, emb[:, 1:]], 1)
    for i in range(tc["num_hidden_layers"]):
        if args.checkpointing:
            h = torch.utils.checkpoint.checkpoint(layer, i, h, cos, sin, mask, use_reentrant=False)
        else:
            h = layer(i, h, cos, sin, mask)
    logits = F.linear(rms(h, trainable["language_model.model.norm.weight"]), trainable["language_model.lm_head.weight"]).float()
    ac.__exit__(None, None, None)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    print(json.dumps({"step": step, "seconds": round(dt, 3), "tokens": T, "tokens_per_second": round(T / dt, 2), "loss": loss.item()}), flush=True)
print(json.dumps({"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3),
                  "threads": args.threads, "torch": torch.__version__, "checkpointing": args.checkpointing, "autocast": args.autocast}))

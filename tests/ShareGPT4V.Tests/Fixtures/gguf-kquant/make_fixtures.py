"""Writes the K-quant GGUF fixtures (see README.md beside this script).

    python3 make_fixtures.py GGUF_PY_DIR ORACLE_MMPROJ_F32 OUT_DIR

GGUF_PY_DIR is llama.cpp's gguf-py folder (the `gguf` package: quants.py dequantizes the blocks, gguf_writer.py
writes the files); ORACLE_MMPROJ_F32 is the hf_llama2vocab case's mmproj-f32.gguf (its CLIP tower is reused).
Needs numpy and torch (only for the float64 reference forward). Deterministic: seeded generators only.
"""
import sys
import math

import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T, quants  # noqa: E402

MMPROJ_SRC, OUT = sys.argv[2], sys.argv[3]
QK_K = 256
rng = np.random.default_rng(20261207)


# ------------------------------------------------------------------------------------------------ K-quant encoders
# The encoders follow the algorithm of ggml-quants.c's quantize_row_q4_K_ref / quantize_row_q6_K_ref (searching the
# sub-block scale and min, 6-bit / 8-bit scale codes under an fp16 super-scale). They need not be bit-exact with
# ggml: the reference weights of every fixture are the blocks as written, dequantized by gguf-py's quants.py.

def nearest_int(x):
    return np.rint(np.float32(x)).astype(np.int64)  # ggml's nearest_int rounds half to even


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep):
    x = x.astype(np.float32)
    w = weights.astype(np.float32)
    mn, mx = np.float32(min(x.min(), 0)), np.float32(x.max())
    if mx == mn:
        return np.float32(0), np.float32(-mn), np.zeros(len(x), np.int64)
    sum_w, sum_x = w.sum(dtype=np.float32), (w * x).sum(dtype=np.float32)
    iscale = np.float32(nmax / (mx - mn))
    scale = np.float32(1 / iscale)
    L = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
    best = (w * (scale * L + mn - x) ** 2).sum(dtype=np.float32)
    for step in range(nstep + 1):
        iscale = np.float32((rmin + rdelta * step + nmax) / (mx - mn))
        l = np.clip(nearest_int(iscale * (x - mn)), 0, nmax).astype(np.float32)
        sum_l, sum_l2, sum_xl = (w * l).sum(dtype=np.float32), (w * l * l).sum(dtype=np.float32), (w * l * x).sum(dtype=np.float32)
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = np.float32(0)
                this_scale = sum_xl / sum_l2
            mad = (w * (this_scale * l + this_min - x) ** 2).sum(dtype=np.float32)
            if mad < best:
                L, best, scale, mn = l.astype(np.int64), mad, np.float32(this_scale), np.float32(this_min)
    return scale, np.float32(-mn), L


def encode_q4_k_block(x):
    scales, mins = np.zeros(8, np.float32), np.zeros(8, np.float32)
    for j in range(8):
        xs = x[32 * j:32 * j + 32]
        av = np.sqrt(np.float32((xs * xs).sum(dtype=np.float32) / 32))
        scales[j], mins[j], _ = make_qkx2_quants(xs, av + np.abs(xs), 15, -1.0, 0.1, 20)
    max_scale, max_min = scales.max(), mins.max()
    inv_scale = np.float32(63 / max_scale) if max_scale > 0 else np.float32(0)
    inv_min = np.float32(63 / max_min) if max_min > 0 else np.float32(0)
    ls = np.minimum(63, nearest_int(inv_scale * scales)).astype(np.uint8)
    lm = np.minimum(63, nearest_int(inv_min * mins)).astype(np.uint8)
    packed = np.zeros(12, np.uint8)
    for j in range(8):
        if j < 4:
            packed[j] = ls[j]
            packed[j + 4] = lm[j]
        else:
            packed[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
            packed[j - 4] |= (ls[j] >> 4) << 6
            packed[j] |= (lm[j] >> 4) << 6
    d = np.float16(max_scale / 63)
    dmin = np.float16(max_min / 63)
    L = np.zeros(QK_K, np.int64)
    for j in range(8):
        sd = np.float32(d) * np.float32(ls[j])
        if sd == 0:
            continue
        dm = np.float32(dmin) * np.float32(lm[j])
        L[32 * j:32 * j + 32] = np.clip(nearest_int((x[32 * j:32 * j + 32] + dm) / sd), 0, 15)
    qs = np.zeros(128, np.uint8)
    for j in range(0, QK_K, 64):
        qs[j // 2:j // 2 + 32] = (L[j:j + 32] | (L[j + 32:j + 64] << 4)).astype(np.uint8)
    return np.concatenate([np.array([d, dmin], np.float16).view(np.uint8), packed, qs])


def make_qx_quants(x, nmax):
    # rmse_type 1 (weights x^2), no importance matrix
    x = x.astype(np.float32)
    i = np.argmax(np.abs(x))
    mx = x[i]
    if abs(mx) < 1e-15:
        return np.float32(0)
    w = x * x
    iscale = np.float32(-nmax / mx)
    l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(np.float32)
    sumlx, suml2 = (w * x * l).sum(dtype=np.float32), (w * l * l).sum(dtype=np.float32)
    scale = sumlx / suml2 if suml2 else np.float32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = np.float32(-(nmax + 0.1 * step) / mx)
        l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(np.float32)
        sumlx, suml2 = (w * x * l).sum(dtype=np.float32), (w * l * l).sum(dtype=np.float32)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            scale = sumlx / suml2
            best = scale * sumlx
    return np.float32(scale)


def encode_q6_k_block(x):
    scales = np.array([make_qx_quants(x[16 * i:16 * i + 16], 32) for i in range(16)], np.float32)
    i = np.argmax(np.abs(scales))
    if abs(scales[i]) < 1e-15:
        return np.zeros(210, np.uint8)
    iscale = np.float32(-128 / scales[i])
    d = np.float16(1 / iscale)
    sc = np.minimum(127, nearest_int(iscale * scales)).astype(np.int8)
    L = np.full(QK_K, 32, np.int64)
    for j in range(16):
        sd = np.float32(d) * np.float32(sc[j])
        if sd == 0:
            continue
        L[16 * j:16 * j + 16] = np.clip(nearest_int(x[16 * j:16 * j + 16] / sd), -32, 31) + 32
    ql, qh = np.zeros(128, np.uint8), np.zeros(64, np.uint8)
    for j in range(0, QK_K, 128):
        a, b, c, e = L[j:j + 32], L[j + 32:j + 64], L[j + 64:j + 96], L[j + 96:j + 128]
        ql[j // 2:j // 2 + 32] = (a & 0xF) | ((c & 0xF) << 4)
        ql[j // 2 + 32:j // 2 + 64] = (b & 0xF) | ((e & 0xF) << 4)
        qh[j // 4:j // 4 + 32] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    return np.concatenate([ql, qh, sc.view(np.uint8), np.array([d], np.float16).view(np.uint8)])


def encode(matrix, qtype):
    enc = encode_q4_k_block if qtype == T.Q4_K else encode_q6_k_block
    rows, cols = matrix.shape
    blocks = [enc(b) for b in matrix.astype(np.float32).reshape(-1, QK_K)]
    return np.stack(blocks).reshape(rows, cols // QK_K * len(blocks[0]))


def dequant(raw, qtype):
    return quants.dequantize(raw, qtype)  # gguf-py: the reference


# ------------------------------------------------------------------------------------------------ 1. block goldens

def half_bits(values):
    return np.array(values, np.float16).view(np.uint8).reshape(-1, 2)


def random_q4_k(n):
    b = rng.integers(0, 256, size=(n, 144), dtype=np.uint8)
    # d and dmin: positive halves of sensible size, as the quantizer writes them
    b[:, 0:2] = half_bits(rng.uniform(1e-4, 0.05, n))
    b[:, 2:4] = half_bits(rng.uniform(0, 0.05, n))
    return b


def random_q6_k(n):
    b = rng.integers(0, 256, size=(n, 210), dtype=np.uint8)
    b[:, 208:210] = half_bits(rng.choice([-1, 1], n) * rng.uniform(1e-5, 0.01, n))
    return b


def adversarial_q4_k():
    out = []
    for d, dmin, fill in [(0.0, 0.0, None), (0.0, 1.0, None), (1.0, 0.0, None), (65504.0, 65504.0, 0xFF),
                          (65504.0, 65504.0, 0x00), (6e-8, 6e-8, 0xFF), (-2.5, 3.0, None), (1.0, -1.0, 0xA5),
                          (2 ** -14, 2 ** -24, None), (0.5, 0.25, 0x3F)]:
        b = rng.integers(0, 256, size=144, dtype=np.uint8) if fill is None else np.full(144, fill, np.uint8)
        b[0:4] = half_bits([d, dmin]).reshape(-1)
        out.append(b)
    return np.stack(out)


def adversarial_q6_k():
    out = []
    for d, fill in [(0.0, None), (1.0, 0xFF), (1.0, 0x00), (-1.0, 0x80), (65504.0, 0x80), (65504.0, 0x7F),
                    (6e-8, None), (2 ** -14, 0xFF), (-0.125, None), (0.5, 0x55)]:
        b = rng.integers(0, 256, size=210, dtype=np.uint8) if fill is None else np.full(210, fill, np.uint8)
        b[208:210] = half_bits([d]).reshape(-1)
        out.append(b)
    return np.stack(out)


def write_goldens(path):
    w = gguf.GGUFWriter(path, "kquant-goldens")
    for name, qtype, blocks in [("q4_k", T.Q4_K, np.concatenate([random_q4_k(22), adversarial_q4_k()])),
                                ("q6_k", T.Q6_K, np.concatenate([random_q6_k(22), adversarial_q6_k()]))]:
        rows = blocks.reshape(8, -1)  # 8 rows of 4 super-blocks (1024 weights)
        values = dequant(rows, qtype)
        assert values.shape == (8, 1024) and np.isfinite(values).all()
        w.add_tensor(name, rows, raw_dtype=qtype)
        w.add_tensor(name + ".f32", values.astype(np.float32))
        # What a load that converts to 32-weight blocks must write: gguf-py's Q8_0 / Q4_0 reference quantizers
        # (bit-exact with ggml's quantize_row_q8_0_ref / q4_0_ref) over the exact values.
        w.add_tensor(name + ".q8_0", quants.quantize(values, T.Q8_0), raw_dtype=T.Q8_0)
        w.add_tensor(name + ".q4_0", quants.quantize(values, T.Q4_0), raw_dtype=T.Q4_0)
    # Q5_0, which Q4_K_M files hold where a row is not whole 256-weight super-blocks. Its conversion to Q8_0 is
    # lossless (same d, q - 16), so only the values and the Q4_0 requantization are goldens.
    q5 = rng.integers(0, 256, size=(64, 22), dtype=np.uint8)
    q5[:, 0:2] = half_bits(rng.choice([-1, 1], 64) * rng.uniform(1e-4, 0.05, 64))
    q5[60:, 0:2] = half_bits([0.0, 65504.0, 6e-8, -1.0])
    q5[63, 2:] = 0xFF
    rows = q5.reshape(8, -1)  # 8 rows of 8 blocks (256 weights)
    values = dequant(rows, T.Q5_0)
    assert np.isfinite(values).all()
    w.add_tensor("q5_0", rows, raw_dtype=T.Q5_0)
    w.add_tensor("q5_0.f32", values.astype(np.float32))
    w.add_tensor("q5_0.q4_0", quants.quantize(values, T.Q4_0), raw_dtype=T.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------------------------------------ 2. the tiny LLM

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS, VOCAB = 256, 512, 4, 2, 1, 320
HEAD_DIM = HIDDEN // HEADS
EPS = float(np.float32(1e-5))
ROPE_BASE = 10000.0


def vocabulary():
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"), scores.append(0.0), types.append(6)
    pieces = ["\u2581"] + list("etaoinshrdlucmfwygpbvkxqjz") + list("ETAOINSHRDLUCMFWYGPBVKXQJZ") + list(".,:?!'")
    pieces += ["\u2581" + c for c in "etaoinshrdlucmfwygpbvkxqjzWIT"]
    pieces += ["th", "he", "in", "er", "an", "\u2581th", "\u2581the", "\u2581a", "\u2581is", "\u2581of", "\u2581in",
               "at", "on", "en", "re", "it", "ou", "\u2581wh", "\u2581what", "\u2581this", "\u2581image",
               "\u2581US", "\u2581USER", "\u2581AS", "\u2581ASS", "\u2581ASSIST", "\u2581ASSISTANT", "ER", "IST", "ANT",
               "\u2581describe", "\u2581pict", "\u2581picture", "es", "ed", "ing", "\u2581and", "\u2581to", "\u2581it"]
    seen = set()
    pieces = [p for p in pieces if not (p in seen or seen.add(p))]
    n_normal = VOCAB - len(tokens) - 2
    pieces = (pieces + [f"\u2581w{i}" for i in range(n_normal)])[:n_normal]
    for i, p in enumerate(pieces):
        tokens.append(p), scores.append(-float(i)), types.append(1)
    tokens += ["<image>", "<pad>"]
    scores += [0.0, 0.0]
    types += [3, 3]
    assert len(tokens) == VOCAB
    return tokens, scores, types


# Q4_K_M's per-tensor choice for a LLaMA of one layer (llama.cpp's llama_tensor_get_type): the default type Q4_K;
# output.weight Q6_K; attn_v and ffn_down Q6_K in the layers use_more_bits picks (with one layer, layer 0 is one).
def q4_k_m_type(name):
    if name == "output.weight" or name.endswith("attn_v.weight") or name.endswith("ffn_down.weight"):
        return T.Q6_K
    return T.Q4_K


def llm_weights():
    g = np.random.default_rng(42)
    s = 0.05
    w = {"token_embd.weight": g.normal(0, 1.0, (VOCAB, HIDDEN)), "output.weight": g.normal(0, s, (VOCAB, HIDDEN)),
         "output_norm.weight": 1 + 0.1 * g.normal(size=HIDDEN)}
    for i in range(LAYERS):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = 1 + 0.1 * g.normal(size=HIDDEN)
        w[p + "ffn_norm.weight"] = 1 + 0.1 * g.normal(size=HIDDEN)
        w[p + "attn_q.weight"] = g.normal(0, s, (HIDDEN, HIDDEN))
        w[p + "attn_k.weight"] = g.normal(0, s, (KV_HEADS * HEAD_DIM, HIDDEN))
        w[p + "attn_v.weight"] = g.normal(0, s, (KV_HEADS * HEAD_DIM, HIDDEN))
        w[p + "attn_output.weight"] = g.normal(0, s, (HIDDEN, HIDDEN))
        w[p + "ffn_gate.weight"] = g.normal(0, s, (FFN, HIDDEN))
        w[p + "ffn_up.weight"] = g.normal(0, s, (FFN, HIDDEN))
        w[p + "ffn_down.weight"] = g.normal(0, s, (HIDDEN, FFN))
    return {k: v.astype(np.float32) for k, v in w.items()}


def write_llm(path, weights):
    """Writes the LLM file; returns name -> (exact float32 weights, Q8_0-converted float32 weights)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("kquant-tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(2048)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_vocab_size(VOCAB)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_quantization_version(2)
    tokens, scores, types = vocabulary()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(VOCAB - 1)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    ref = {}
    for name, x in weights.items():
        if x.ndim == 1:
            w.add_tensor(name, x)
            ref[name] = (x, x)
            continue
        qtype = q4_k_m_type(name)
        raw = encode(x, qtype)
        exact = dequant(raw, qtype)
        converted = dequant(quants.quantize(exact, T.Q8_0), T.Q8_0)
        w.add_tensor(name, raw, raw_dtype=qtype)
        ref[name] = (exact, converted)
        as_q4_0 = dequant(quants.quantize(exact, T.Q4_0), T.Q4_0)

        def rms(a):
            return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))
        print(f"{name}: {qtype.name} {raw.nbytes} bytes; rms error against the float32 source: {qtype.name} {rms(exact - x):.3g}; "
              f"added by a conversion of the {qtype.name} values: to Q8_0 {rms(converted - exact):.3g}, "
              f"to Q4_0 {rms(as_q4_0 - exact):.3g}; rms of the weights {rms(x):.3g}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


def forward(W, ids):
    """LLaMA in float64 over GGUF-layout weights: q/k rows interleave each head's rotary pairs (2i, 2i+1)."""
    t = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in W.items()}

    def rms(x, g):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * g

    n = len(ids)
    pos = torch.arange(n, dtype=torch.float64)
    inv = ROPE_BASE ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    ang = pos[:, None] * inv[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rope(x):  # [n, heads, d]
        a, b = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    x = t["token_embd.weight"][torch.tensor(ids)]
    mask = torch.triu(torch.full((n, n), float("-inf"), dtype=torch.float64), 1)
    for i in range(LAYERS):
        p = f"blk.{i}."
        h = rms(x, t[p + "attn_norm.weight"])
        q = rope((h @ t[p + "attn_q.weight"].T).reshape(n, HEADS, HEAD_DIM))
        k = rope((h @ t[p + "attn_k.weight"].T).reshape(n, KV_HEADS, HEAD_DIM))
        v = (h @ t[p + "attn_v.weight"].T).reshape(n, KV_HEADS, HEAD_DIM)
        group = HEADS // KV_HEADS
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(HEAD_DIM) + mask
        o = torch.einsum("hqk,khd->qhd", torch.softmax(att, -1), v).reshape(n, HIDDEN)
        x = x + o @ t[p + "attn_output.weight"].T
        h = rms(x, t[p + "ffn_norm.weight"])
        gate = h @ t[p + "ffn_gate.weight"].T
        x = x + (torch.nn.functional.silu(gate) * (h @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
    return (rms(x, t["output_norm.weight"]) @ t["output.weight"].T).numpy()


# ------------------------------------------------------------------------------------------------ 3. the mmproj

def write_mmproj(path):
    r = gguf.GGUFReader(MMPROJ_SRC)
    w = gguf.GGUFWriter(path, "clip")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_array(f.name, [f.parts[i].tolist()[0] for i in f.data])
        elif vt == gguf.GGUFValueType.STRING:
            w.add_key_value(f.name, bytes(f.parts[f.data[0]]).decode("utf-8"), vt)
        else:
            w.add_key_value(f.name, f.parts[f.data[0]].tolist()[0], vt)
    vision = 32
    g = np.random.default_rng(7)
    for t in r.tensors:
        if t.name.startswith("mm."):
            continue
        data = np.array(t.data)
        w.add_tensor(t.name, data, raw_shape=list(reversed([int(n) for n in t.shape])),
                     raw_dtype=T(t.tensor_type))
    # The projector to the LLM's width, stored as the legacy converter stores it (F16 matrices, F32 biases).
    w.add_tensor("mm.0.weight", g.normal(0, 0.2, (HIDDEN, vision)).astype(np.float16))
    w.add_tensor("mm.0.bias", g.normal(0, 0.02, HIDDEN).astype(np.float32))
    w.add_tensor("mm.2.weight", g.normal(0, 0.06, (HIDDEN, HIDDEN)).astype(np.float16))
    w.add_tensor("mm.2.bias", g.normal(0, 0.02, HIDDEN).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_reference(path, ref):
    seqs = [[1] + [int(i) for i in rng.integers(3, VOCAB - 2, 15)], [1, 300, 301, 302, 303, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]
    exact = {k: v[0] for k, v in ref.items()}
    conv = {k: v[1] for k, v in ref.items()}
    w = gguf.GGUFWriter(path, "kquant-reference")
    w.add_tensor("ids", np.array(seqs, np.int32))
    le = np.stack([forward(exact, s) for s in seqs]).astype(np.float32)
    lc = np.stack([forward(conv, s) for s in seqs]).astype(np.float32)
    w.add_tensor("logits.exact", le)
    w.add_tensor("logits.q8_0", lc)
    print(f"logits: |exact| max {np.abs(le).max():.3g}; |q8_0 - exact| max {np.abs(lc - le).max():.3g}, "
          f"mean {np.abs(lc - le).mean():.3g}; top-1 agreement {(le.argmax(-1) == lc.argmax(-1)).mean():.3f}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    write_goldens(f"{OUT}/kquant-blocks.gguf")
    ref = write_llm(f"{OUT}/llm-q4_k_m.gguf", llm_weights())
    write_mmproj(f"{OUT}/mmproj.gguf")
    write_reference(f"{OUT}/reference.gguf", ref)

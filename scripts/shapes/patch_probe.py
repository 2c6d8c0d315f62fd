#!/usr/bin/env python3
"""Binding with image-like tokens: can a from-scratch decoder of the shipped model's size find a named shape?

The companion of binding_probe.py. Here the scene is what the decoder sees of an image: 100 "patch" tokens on a
10 x 10 grid, each either background or one token for the (colour, shape) of the object under it (an object covers a
1 x 1 to 3 x 3 block inside its cell of the 3 x 3 grid), followed by conjunction questions "Is there a {color}
{shape} in the image ?". Each question is present or absent on its own coin flip, the absent pair sharing a colour or
a shape with an object. The decoder is a pre-norm LLaMA-style stack (RoPE, SwiGLU MLP 512, width 192, 6 heads),
trained from scratch on the answer tokens only; it prints the loss and the answer accuracy over the last 100 steps.
`--tied 1` builds each patch token's embedding as the sum of its colour word's and shape word's embeddings, the
shape an auxiliary alignment loss would give image tokens. docs/shapes-model.md reports what it measured.

Usage: python3 scripts/shapes/patch_probe.py --steps 3000 [--lr 1e-3] [--questions 4] [--tied 0]   (PyTorch 1.13)
"""
import math
import random

import torch
import torch.nn as nn

from probe_train import COLORS, SHAPES, parse_args, train

a = parse_args(lambda ap: ap.add_argument("--tied", type=int, default=0, help="1: patch embedding = colour word + shape word embeddings"))
vocab = {"<pad>": 0, "USER:": 1, "ASSISTANT:": 2, "</s>": 3, "<bg>": 4}


def ids(text):
    return [vocab.setdefault(w, len(vocab)) for w in text.split(" ") if w]


for c in COLORS:
    for s in SHAPES:
        ids(f"<{c}_{s}>")
for w in COLORS + SHAPES + "Is there a an in the image ? Yes No \n".split(" "):
    ids(w)
PATCH = {vocab[f"<{c}_{s}>"]: (vocab[c], vocab[s]) for c in COLORS for s in SHAPES}


def record():
    objs = [(random.choice(COLORS), random.choice(SHAPES), cell) for cell in random.sample(range(9), random.randint(1, 4))]
    grid = [vocab["<bg>"]] * 100
    for c, s, cell in objs:
        row, col = divmod(cell, 3)
        size = random.choice([1, 2, 3])
        # Cells of the 10 x 10 grid: rows/columns 0-2, 3-5, 6-9.
        r0 = row * 3 + random.randint(0, 3 - size) + (1 if row == 2 else 0)
        c0 = col * 3 + random.randint(0, 3 - size) + (1 if col == 2 else 0)
        for i in range(size):
            for j in range(size):
                grid[(r0 + i) * 10 + c0 + j] = vocab[f"<{c}_{s}>"]
    present = sorted({(c, s) for c, s, _ in objs})
    x, y = [1] + grid, [-100] * 101
    for i in range(a.questions):
        if random.random() < 0.5:
            c, s = random.choice(present)
        else:
            o = random.choice(objs)
            c, s = (o[0], random.choice(SHAPES)) if random.random() < 0.5 else (random.choice(COLORS), o[1])
        article = "an" if c[0] in "aeiou" else "a"
        prompt = ([] if i == 0 else [1]) + ids(f"\n Is there {article} {c} {s} in the image ?") + [2]
        answer = ids("Yes" if (c, s) in present else "No") + [3]
        x += prompt + answer
        y += [-100] * len(prompt) + [answer[0], -100]
    return x, y


V, D, H = len(vocab), a.width, 6
HD = D // H


def rope(t):
    n = t.shape[2]
    freqs = torch.outer(torch.arange(n).float(), 1.0 / (10000 ** (torch.arange(0, HD, 2).float() / HD)))
    cos, sin = torch.cat([freqs.cos()] * 2, -1), torch.cat([freqs.sin()] * 2, -1)
    half = HD // 2
    return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.o = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)
        self.gate, self.up, self.down = nn.Linear(D, 512, bias=False), nn.Linear(D, 512, bias=False), nn.Linear(512, D, bias=False)

    def forward(self, x, mask):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, H, HD).permute(2, 0, 3, 1, 4)
        att = (rope(q) @ rope(k).transpose(-1, -2)) / math.sqrt(HD) + mask
        x = x + self.o((att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, D))
        h = self.mlp_norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.blocks = nn.ModuleList([Block() for _ in range(a.layers)])
        self.norm, self.head = nn.LayerNorm(D), nn.Linear(D, V)
        ids_ = sorted(PATCH)
        self.patch_ids = torch.tensor(ids_)
        self.patch_color = torch.tensor([PATCH[i][0] for i in ids_])
        self.patch_shape = torch.tensor([PATCH[i][1] for i in ids_])

    def forward(self, x):
        t = x.shape[1]
        h = self.embed(x)
        if a.tied:
            w = self.embed.weight
            table = w.clone()
            table[self.patch_ids] = w[self.patch_color] + w[self.patch_shape]
            h = table[x]
        mask = torch.triu(torch.full((t, t), float("-inf")), 1)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.norm(h))


model = Decoder()
train(model, record, V, a.steps, a.batch, a.lr)

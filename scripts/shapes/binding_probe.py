#!/usr/bin/env python3
"""How hard is binding for a decoder of the shipped model's size, with no image at all?

The shapes world's scene is written out as words ("purple star top right ; green circle center"), followed by
yes/no questions, and a small causal transformer (width 192, 6 heads, MLP 512, learned positions, pre-norm) is
trained from scratch on the answer tokens only. `--mode shape` asks "Is there a {shape} in the image ?" (one word to
find); `--mode conj` asks "Is there a {color} {shape} in the image ?" with half the questions absent and every absent
pair sharing its colour or its shape with an object of the scene (the binding question of the shapes model).
Prints the loss and the answer accuracy over the last 100 steps. docs/shapes-model.md reports what it measured.

Usage: python3 scripts/shapes/binding_probe.py --mode conj --steps 3000   (PyTorch 1.13, one thread)
"""
import random

import torch
import torch.nn as nn

from probe_train import COLORS, SHAPES, parse_args, train

a = parse_args(lambda ap: ap.add_argument("--mode", choices=["shape", "conj"], default="conj"))
CELLS = ["top left", "top center", "top right", "middle left", "center", "middle right",
         "bottom left", "bottom center", "bottom right"]
vocab = {"<pad>": 0, "USER:": 1, "ASSISTANT:": 2, "</s>": 3}


def ids(text):
    out = []
    for w in text.replace("\n", " \n ").split(" "):
        if w:
            out.append(vocab.setdefault(w, len(vocab)))
    return out


for w in COLORS + SHAPES + "Is there a in the image ? Yes No ; \n".split(" ") + " ".join(CELLS).split():
    ids(w)


def record():
    objs = [(random.choice(COLORS), random.choice(SHAPES), CELLS[c]) for c in random.sample(range(9), random.randint(1, 4))]
    scene = " ; ".join(f"{c} {s} {p}" for c, s, p in objs)
    present = sorted({(c, s) for c, s, _ in objs})
    qs = []
    for _ in range(a.questions):
        if a.mode == "shape":
            s = random.choice(SHAPES)
            qs.append((f"Is there a {s} in the image ?", any(o[1] == s for o in objs)))
            continue
        if random.random() < 0.5:
            c, s = random.choice(present)
        else:
            o = random.choice(objs)
            c, s = (o[0], random.choice(SHAPES)) if random.random() < 0.5 else (random.choice(COLORS), o[1])
        qs.append((f"Is there a {c} {s} in the image ?", (c, s) in present))
    x, y = [], []
    for i, (q, yes) in enumerate(qs):
        prompt = [1] + ids((scene + "\n" if i == 0 else "") + q) + [2]
        answer = ids("Yes" if yes else "No") + [3]
        x += prompt + answer
        y += [-100] * len(prompt) + [answer[0], -100]
    return x, y


V = len(vocab)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, a.width)
        self.pos = nn.Embedding(512, a.width)
        layer = nn.TransformerEncoderLayer(a.width, 6, 512, 0.0, batch_first=True, norm_first=True, activation="gelu")
        self.layers = nn.TransformerEncoder(layer, a.layers)
        self.norm = nn.LayerNorm(a.width)
        self.head = nn.Linear(a.width, V)

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf")), 1)
        return self.head(self.norm(self.layers(self.embed(x) + self.pos(torch.arange(t)), mask=mask)))


model = Decoder()
train(model, record, V, a.steps, a.batch, a.lr)

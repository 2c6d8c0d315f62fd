"""What the shapes probes share (binding_probe.py, patch_probe.py): the world's words, the common options, and the
training loop: AdamW without weight decay, gradient clipping at 1.0, cross-entropy on the answer tokens only (labels
-100 elsewhere), and every 100 steps the loss and the answer accuracy over the last 100 steps."""
import argparse
import random
import time

import torch
import torch.nn as nn

COLORS = ["red", "green", "blue", "yellow", "orange", "purple"]
SHAPES = ["circle", "square", "triangle", "star"]


def parse_args(add_options=None):
    """The options every probe takes (plus its own, added by add_options(parser)); seeds torch and random, one thread."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--questions", type=int, default=4, help="questions per scene")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    if add_options:
        add_options(ap)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    return a


def train(model, record, vocab_size, steps, batch_size, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0)
    start, acc = time.time(), []
    for step in range(1, steps + 1):
        batch = [record() for _ in range(batch_size)]
        t = max(len(x) for x, _ in batch)
        x = torch.tensor([x + [0] * (t - len(x)) for x, _ in batch])
        y = torch.tensor([y + [-100] * (t - len(y)) for _, y in batch])[:, 1:]
        logits = model(x)[:, :-1]
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        m = y != -100
        acc.append(((logits.argmax(-1) == y) & m).sum().item() / m.sum().item())
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f} accuracy(last 100) {sum(acc[-100:]) / 100:.3f} {time.time() - start:.0f}s", flush=True)

"""PyTorch peer of bench/train_throughput.cpp: the same GPT (read from the same recipe), the same
AdamW update, random tokens, same threads and precision. Prints one JSON line.

    /usr/bin/python3 bench/train_throughput_peer.py RECIPE THREADS PRECISION WARMUP STEPS
"""
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_recipe(path):
    # The recipe is flat YAML two levels deep; avoid a PyYAML dependency.
    recipe, section = {}, None
    for raw in open(path):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        key, _, value = line.strip().partition(":")
        if not line.startswith(" "):
            section = recipe.setdefault(key, {}) if not value.strip() else None
            continue
        value = value.strip()
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        if value in ("true", "false"):
            value = value == "true"
        section[key] = value
    return recipe


class Block(nn.Module):
    def __init__(self, d, h, d_ff):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, d_ff)
        self.fc2 = nn.Linear(d_ff, d)

    def forward(self, x, mask):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q = q.view(B, T, self.h, C // self.h).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, self.h, C // self.h).transpose(1, 2)
        v = v.view(B, T, self.h, C // self.h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(mask[:T, :T], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, m):
        super().__init__()
        d = m["d_model"]
        self.wte = nn.Embedding(m["vocab_size"], d)
        self.wpe = nn.Embedding(m["max_seq_len"], d)
        self.blocks = nn.ModuleList(Block(d, m["n_heads"], m["d_ff"]) for _ in range(m["n_layers"]))
        self.ln_f = nn.LayerNorm(d)
        self.tied = m.get("tie_embeddings", True)
        if not self.tied:
            self.head = nn.Linear(d, m["vocab_size"], bias=False)
        # loom's init (GPT-2's): N(0, 0.02), biases 0; speed does not depend on it, the loss does.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
        T = m["max_seq_len"]
        self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).triu(1))

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[:T]
        for block in self.blocks:
            x = block(x, self.mask)
        x = self.ln_f(x)
        return x @ self.wte.weight.t() if self.tied else self.head(x)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "recipes/bench/gpt-384.yaml"
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    precision = sys.argv[3] if len(sys.argv) > 3 else "bf16"
    warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    torch.set_num_threads(threads)
    recipe = load_recipe(path)
    m, t = recipe["model"], recipe.get("train", {})
    torch.manual_seed(0)
    model = GPT(m)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith(("wte", "wpe"))]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith(("wte", "wpe")))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=t.get("lr", 6e-4), betas=(0.9, 0.95), eps=1e-8)
    B, T, V = t.get("batch_size", 8), m["max_seq_len"], m["vocab_size"]

    def step():
        tokens = torch.randint(V, (B, T + 1))
        x, y = tokens[:, :-1], tokens[:, 1:]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = time.perf_counter() - start
    print(json.dumps({"impl": "pytorch", "threads": threads, "precision": precision,
                      "params": sum(p.numel() for p in model.parameters()),
                      "tokens_per_s": round(steps * B * T / seconds, 1),
                      "step_ms": round(1000 * seconds / steps, 1), "final_loss": round(loss, 4)}))


if __name__ == "__main__":
    main()

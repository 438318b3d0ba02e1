#!/usr/bin/env python3
"""PyTorch eager CPU training throughput, as a baseline for the engine's CPU
benchmark (same model, batch and optimizer settings).

Model: byte-level GPT-2 (vocab 256, 4 layers, 4 heads, n_embd 128, context
128), pre-LN, tanh-approximated GELU, tied embeddings, biases, no dropout.
Batch 32 x T=128, AdamW(lr=1e-3, betas=(0.9, 0.95), wd=0.1), fp32.

The model is written in plain torch, nanoGPT style, i.e. what a user would
write; `F.scaled_dot_product_attention(is_causal=True)` is used for attention.

Usage:
  /work/refenv/bin/python benches/reference/cpu_train_torch.py [--steps N] [--warmup N] [--threads N] [--json]
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_PATH = os.path.join(REPO_ROOT, "datasets", "data", "tinyshakespeare.txt")

VOCAB = 256
N_LAYER = 4
N_HEAD = 4
N_EMBD = 128
BLOCK_SIZE = 128
T = 128
BATCH = 32
LR = 1e-3
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD)
        self.c_proj = nn.Linear(N_EMBD, N_EMBD)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(N_EMBD, dim=2)
        q = q.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2)
        k = k.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2)
        v = v.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = nn.Linear(N_EMBD, 4 * N_EMBD)
        self.c_proj = nn.Linear(4 * N_EMBD, N_EMBD)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(N_EMBD)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(N_EMBD)
        self.mlp = MLP()

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, N_EMBD)
        self.wpe = nn.Embedding(BLOCK_SIZE, N_EMBD)
        self.h = nn.ModuleList([Block() for _ in range(N_LAYER)])
        self.ln_f = nn.LayerNorm(N_EMBD)
        self.lm_head = nn.Linear(N_EMBD, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * N_LAYER))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        t = idx.size(1)
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def make_optimizer(model):
    # Decay only the matmul weights (same grouping as the engine and the
    # reference fixture); embeddings, biases and LayerNorm are not decayed.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.dim() == 2 and not name.startswith(("wte.", "wpe.")):
            decay.append(p)
        else:
            no_decay.append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LR,
        betas=BETAS,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="measured steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed warmup steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="also print one JSON summary line")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with open(DATA_PATH, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    if data.numel() <= T + 1:
        print(f"dataset too small: {DATA_PATH}", file=sys.stderr)
        return 1

    model = GPT()
    model.train()
    opt = make_optimizer(model)
    n_params = sum(p.numel() for p in model.parameters())

    def get_batch():
        starts = torch.randint(0, data.numel() - (T + 1), (BATCH,))
        win = torch.stack([data[s : s + T + 1] for s in starts.tolist()]).long()
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()

    step_times = []
    loss = None
    for step in range(args.warmup + args.steps):
        # Batch sampling is outside the timed region: only the training step
        # itself (forward + backward + optimizer step + zero_grad) is measured.
        x, y = get_batch()
        t0 = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            step_times.append(dt)

    tokens_per_step = BATCH * T
    tps = [tokens_per_step / dt for dt in step_times]
    step_ms_median = statistics.median(step_times) * 1e3
    tps_median = statistics.median(tps)

    print(
        f"pytorch-eager CPU train: vocab={VOCAB} n_layer={N_LAYER} n_head={N_HEAD} "
        f"n_embd={N_EMBD} B={BATCH} T={T} params={n_params}"
    )
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"warmup={args.warmup}, measured steps={args.steps}")
    print(f"step ms: median {step_ms_median:.1f}  min {min(step_times) * 1e3:.1f}  "
          f"max {max(step_times) * 1e3:.1f}")
    print(f"tokens/s: median {tps_median:.0f}  min {min(tps):.0f}  max {max(tps):.0f}")
    print(f"final loss: {loss.item():.4f}")
    if args.json:
        print(json.dumps({
            "impl": "pytorch-eager",
            "tokens_per_s_median": round(tps_median, 1),
            "step_ms_median": round(step_ms_median, 3),
            "steps": args.steps,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

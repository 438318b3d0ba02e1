#!/usr/bin/env python3
"""GPT-2 training throughput in PyTorch, the reference the engine's GPU numbers are
compared with (issue 3 acceptance, issue 7 reference). See docs/BENCHMARKS.md,
"GPT-2 124M on one GPU vs PyTorch -- method".

Model: the engine's GPT-2 (models/src/gpt.rs) written the way a PyTorch user would:
pre-LN blocks, tanh-approximated GeLU, biases, tied token embedding / classifier,
learned position embedding, no dropout; the vocabulary (50257) is padded to a multiple
of 128 (50304) and the padding columns are masked out of the softmax (as the engine
does); GPT-2 initialisation (N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)),
biases 0, padding rows 0). Attention is F.scaled_dot_product_attention(is_causal=True);
on CUDA only the flash backend is enabled (--sdpa flash, the default there).

Training step (what is timed): fetch a batch (B windows of T+1 tokens from host memory,
copied to the device), zero_grad, forward + loss under bf16 autocast, backward, clip the
global gradient norm to 1.0, AdamW step (lr 6e-4 peak with the engine's warm-up + cosine
schedule, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on the matmul weights only, as the
engine; fused=True on CUDA). fp32 parameters and optimizer state.

Modes: --mode eager, or --mode compile (torch.compile of the model; compilation happens
in the first warm-up step and is reported separately as compile_s).

Timing (docs/.library METHOD): warm-up steps are excluded; every timed step is bracketed
by torch.cuda.synchronize() and timed with a host clock; tokens/s is B*T over the
median step time. MFU = tokens/s * (6N + 6LCT) / peak, with N counted as the engine
counts it (models/src/gpt.rs flops_per_token: every parameter once, the token embedding
at its unpadded 50257 rows, the position embedding included) and the peak dense bf16 rate
--peak-tflops (default: logs.peak_tflops of --config, else the engine's table by GPU
name, engine/src/logs.rs: 989 for an H100 SXM or H200; the --json line falls back to 989).

Data: --data DIR, a directory made by `engine prepare` (dataset.json + llm.c uint16/uint32
shards), read as the engine reads it: non-overlapping windows of T+1 tokens starting at
multiples of T within each shard, visited in a fresh seeded permutation every epoch (the
permutation itself differs from the engine's, the windows do not). Or --synthetic:
uniformly random token ids below the vocabulary, drawn with the seed.

Engine config (--config PATH, with --set K=V overrides as `engine --set`): the model
(model.*), train.seq_len, train.batch_size, the optimizer (train.lr, min_lr, warmup_steps,
beta1, beta2, eps, weight_decay, grad_clip, decay_all_params), train.precision (auto: bf16
on CUDA, fp32 on the CPU), run.seed, run.device and data.path / data.tokenizer come from
the file, with the engine's defaults (engine/src/config.rs) for keys it omits; explicit
flags override. train.grad_accum must be 1 (no accumulation here), and data.path must be a
directory made by `engine prepare`. With --config the steps default to `engine bench
train`'s: 5 warm-up + 35 timed (--quick: 2 + 4, as `engine bench train --quick`).

Results file (--results FILE): the engine's benchmark format, engine-bench/1
(engine/src/bench, docs/schemas/bench.schema.json), so `engine bench compare engine.json
FILE` prints the ratios. Suite "train", implementation torch-eager / torch-compile (or
--label), the environment (torch version as engine_version, this repository's commit and
dirty state, device, GPU with nvidia-smi's NVML facts, CPU, memory, threads), one
workload whose settings are exactly what the engine's workload_settings writes for the
same config (recompute "none", micro_batch = batch, grad_accum 1, precision, steps =
warm-up + timed, warmup = warm-up steps, the unpadded vocabulary), and entries named as
the engine's, train/<config stem>/none/<metric> ("reference" without --config):
tokens_per_s and step_ms (median, min, max over the timed steps), mfu when a peak rate is
known (--peak-tflops, logs.peak_tflops, or the engine's table by GPU name; not on the
CPU), peak_memory on CUDA (torch.cuda.max_memory_allocated). The engine's data_wait /
forward / backward / optimizer split is not measured here. The workload hash is SHA-256
of the settings' canonical JSON as serde_json writes it (keys sorted, no spaces): note
serde_json writes 1e-8 and 0.00001 where Python's json writes 1e-08 and 1e-05, so
canonical_json() below formats floats itself; json.dumps(sort_keys=True) alone gives
another hash whenever a setting is below 1e-4 (eps = 1e-8 always is).

Examples:
  python benches/reference/gpt2_train_torch.py --mode compile --data data/shakespeare-gpt2 --batch 16 --json
  python benches/reference/gpt2_train_torch.py --config configs/gpt2-124m.toml --mode compile \
      --results torch-compile.json                          # then: engine bench compare engine.json torch-compile.json
  python benches/reference/gpt2_train_torch.py --device cpu --n-layer 2 --n-embd 64 --n-head 2 \
      --seq-len 64 --batch 2 --steps 3 --synthetic          # smoke test, no GPU
"""

import argparse
import contextlib
import ctypes
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SHARD_HEADER_WORDS = 256
SHARD_FORMATS = {(20240520, 1): np.uint16, (20240801, 7): np.uint32}


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.c_proj.residual_projection = True

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.c_proj.residual_projection = True

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, eps):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, context_length, n_layer, n_head, n_embd, eps=1e-5, mask_padding=True):
        super().__init__()
        self.vocab_size = vocab_size
        self.padded_vocab = (vocab_size + 127) // 128 * 128
        self.context_length = context_length
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.wte = nn.Embedding(self.padded_vocab, n_embd)
        self.wpe = nn.Embedding(context_length, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head, eps) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, eps=eps)
        # Padding columns of the logits get -inf: they take no probability and no gradient.
        mask = torch.zeros(self.padded_vocab)
        mask[vocab_size:] = float("-inf")
        self.register_buffer("vocab_mask", mask, persistent=False)
        self.mask_padding = mask_padding and self.padded_vocab != vocab_size
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        std = 0.02
        proj_std = std / math.sqrt(2 * self.n_layer)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, proj_std if getattr(m, "residual_projection", False) else std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.wte.weight[self.vocab_size :].zero_()

    def num_params(self):
        """Parameters as the engine counts them (Model::num_params): every tensor once (the
        classifier is the token embedding), the token embedding at its unpadded rows."""
        n = sum(p.numel() for p in self.parameters())
        return n - (self.padded_vocab - self.vocab_size) * self.n_embd

    def flops_per_token(self, seq_len):
        """models/src/gpt.rs flops_per_token: 6N + 6LCT (BRIEF section 4)."""
        return 6.0 * self.num_params() + 6.0 * self.n_layer * self.n_embd * seq_len

    def forward(self, idx, targets):
        b, t = idx.shape
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)  # tied classifier, (B, T, padded vocab)
        if self.mask_padding:
            logits = logits + self.vocab_mask.to(logits.dtype)
        # Under autocast, cross_entropy's log-softmax runs in fp32 (PyTorch's autocast op lists).
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def learning_rate(step, lr, min_lr, warmup, max_steps):
    """engine/src/schedule.rs: linear warm-up, then cosine to min_lr at max_steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= max_steps or max_steps <= warmup:
        return min_lr
    progress = (step - warmup) / (max_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def make_optimizer(model, args, device):
    # The engine decays only the matmul weights (c_attn, c_proj, c_fc), not biases,
    # LayerNorms or embeddings (train.decay_all_params = false).
    # train.decay_all_params = true (--decay-all-params) decays every parameter.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        matmul = name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        (decay if matmul or args.decay_all_params else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = dict(lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def open_shard(path):
    header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_WORDS)
    if header.size != SHARD_HEADER_WORDS:
        raise SystemExit(f"error: {path}: shorter than the 1024-byte llm.c header")
    key = (int(header[0]), int(header[1]))
    if key not in SHARD_FORMATS:
        raise SystemExit(f"error: {path}: magic/version {key} is not an llm.c token shard (20240520/1 or 20240801/7)")
    dtype = np.dtype(SHARD_FORMATS[key]).newbyteorder("<")
    n = int(header[2])
    expect = SHARD_HEADER_WORDS * 4 + n * dtype.itemsize
    if os.path.getsize(path) != expect:
        raise SystemExit(f"error: {path}: {os.path.getsize(path)} bytes, header says {n} tokens ({expect} bytes)")
    return np.memmap(path, dtype=dtype, mode="r", offset=SHARD_HEADER_WORDS * 4, shape=(n,))


class ShardWindows:
    """The engine's training windows: window w of a shard is tokens [w*T, w*T + T + 1);
    windows never cross shards; each epoch visits all of them in a fresh seeded order."""

    def __init__(self, data_dir, seq_len, batch, seed, vocab_size):
        meta_path = os.path.join(data_dir, "dataset.json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except OSError as e:
            raise SystemExit(f"error: --data {data_dir}: cannot read dataset.json ({e}); make it with `engine prepare`")
        if meta.get("vocab_size") != vocab_size:
            raise SystemExit(f"error: {meta_path}: vocab_size {meta.get('vocab_size')}, the model has {vocab_size} (--vocab-size)")
        self.shards = [open_shard(os.path.join(data_dir, s["file"])) for s in meta["train"]["shards"]]
        self.index = [(i, w * seq_len) for i, s in enumerate(self.shards) for w in range(max(0, (len(s) - 1) // seq_len))]
        if len(self.index) < batch:
            raise SystemExit(f"error: --data {data_dir}: {len(self.index)} windows of {seq_len + 1} tokens, fewer than --batch {batch}")
        self.tokenizer = meta.get("tokenizer")
        self.tokens = int(meta["train"]["tokens"])
        self.description = f"{data_dir} ({meta.get('tokenizer')}, {self.tokens} train tokens, {len(self.index)} windows)"
        self.seq_len, self.batch = seq_len, batch
        self.rng = np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(len(self.index)), 0

    def next(self):
        out = np.empty((self.batch, self.seq_len + 1), dtype=np.int64)
        for r in range(self.batch):
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.index)), 0
            shard, start = self.index[self.order[self.pos]]
            self.pos += 1
            out[r] = self.shards[shard][start : start + self.seq_len + 1]
        return out


class SyntheticWindows:
    def __init__(self, seq_len, batch, seed, vocab_size):
        self.rng = np.random.default_rng(seed)
        self.shape, self.vocab = (batch, seq_len + 1), vocab_size
        self.description = f"synthetic (uniform ids below {vocab_size}, seed {seed})"

    def next(self):
        return self.rng.integers(0, self.vocab, size=self.shape, dtype=np.int64)


def to_device(windows, device):
    t = torch.from_numpy(windows)
    if device.type == "cuda":
        t = t.pin_memory()
    t = t.to(device, non_blocking=True)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


# ---------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------


# What the script uses when neither a flag nor --config gives a value (GPT-2 124M, B=16,
# T=1024, the optimizer settings of configs/gpt2-124m.toml).
# --device (cuda when available), --dtype (bf16) and --steps/--warmup are resolved apart.
LEGACY_DEFAULTS = {
    "n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257, "context_length": None,
    "batch": 16, "seq_len": 1024,
    "lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
    "weight_decay": 0.1, "grad_clip": 1.0, "seed": 1337, "decay_all_params": False,
}

# `engine bench train`'s steps per run: (warm-up, timed); the engine runs warm-up + timed
# steps and leaves the first `warm-up` out of the statistics (engine/src/bench/train.rs steps()).
ENGINE_BENCH_STEPS = {"full": (5, 35), "quick": (2, 4)}

# The engine's defaults for the config keys read here (engine/src/config.rs Default impls),
# with the Rust type of each: "int" (usize/u64), "float" (f64), "str", "bool".
ENGINE_CONFIG = {
    ("run", "seed"): ("int", 1337),
    ("run", "device"): ("str", "auto"),
    ("data", "path"): ("str", None),
    ("data", "tokenizer"): ("str", "byte"),
    ("model", "n_layer"): ("int", 4),
    ("model", "n_head"): ("int", 4),
    ("model", "n_embd"): ("int", 128),
    ("model", "context_length"): ("int", 128),
    ("train", "batch_size"): ("int", 32),
    ("train", "seq_len"): ("int", 128),
    ("train", "grad_accum"): ("int", 1),
    ("train", "lr"): ("float", 1e-3),
    ("train", "min_lr"): ("float", 1e-4),
    ("train", "warmup_steps"): ("int", 100),
    ("train", "weight_decay"): ("float", 0.1),
    ("train", "decay_all_params"): ("bool", False),
    ("train", "beta1"): ("float", 0.9),
    ("train", "beta2"): ("float", 0.95),
    ("train", "eps"): ("float", 1e-8),
    ("train", "grad_clip"): ("float", 1.0),
    ("train", "precision"): ("str", "auto"),
    ("batch", "tokens_per_step"): ("int", None),
    ("memory", "budget"): ("str", None),
    ("logs", "peak_tflops"): ("float", None),
}

# datasets::tokenizer: the unpadded vocabulary of each tokenizer.
TOKENIZER_VOCAB = {"byte": 256, "gpt2": 50257}


def apply_override(table, item):
    """`--set key=value` as the engine applies it (engine/src/config.rs apply_override): the
    value in TOML syntax, a bare word taken as a string; dotted keys make sections."""
    if "=" not in item:
        raise SystemExit(f"error: --set {item}: expected key=value")
    key, raw = (x.strip() for x in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = key.split(".")
    if any(not x for x in parts):
        raise SystemExit(f"error: --set {item}: bad key `{key}`")
    cur = table
    for x in parts[:-1]:
        cur = cur.setdefault(x, {})
        if not isinstance(cur, dict):
            raise SystemExit(f"error: --set {item}: `{x}` in `{key}` is not a section")
    cur[parts[-1]] = value


def read_config(path, sets):
    """The engine config at `path` (with `--set` overrides): the keys of ENGINE_CONFIG, each
    with the engine's default when absent, typed as the engine types it (an f64 key given as
    a TOML integer is a float, as serde reads it). Returns ({(section, key): value}, given
    keys of [train])."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise SystemExit(f"error: --config {path}: cannot read config: {e}")
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"error: --config {path}: invalid TOML: {e}")
    for item in sets:
        apply_override(table, item)
    out = {}
    for (section, key), (kind, default) in ENGINE_CONFIG.items():
        sec = table.get(section, {})
        if not isinstance(sec, dict):
            raise SystemExit(f"error: {path}: `{section}` is not a section")
        if key not in sec:
            out[(section, key)] = default
            continue
        v = sec[key]
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "float": isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
        }[kind]
        if not ok:
            want = {"int": "a non-negative integer", "float": "a number", "str": "a string", "bool": "true or false"}[kind]
            raise SystemExit(f"error: {path}: key `{section}.{key}`: expected {want}, got {v!r}")
        out[(section, key)] = float(v) if kind == "float" else v
    return out, set(table.get("train", {}))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="an engine TOML config: model, train.*, run.seed, data.* from it (engine defaults "
                   "for keys it omits); explicit flags override it")
    p.add_argument("--set", action="append", default=[], metavar="K=V",
                   help="override a key of --config, as `engine --set` does (repeatable)")
    p.add_argument("--mode", choices=["eager", "compile"], default="eager")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default, reduce-overhead, max-autotune, ...)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: run.device of --config, else cuda when available)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                   help="autocast dtype, parameters stay fp32 (default: train.precision of --config, auto = bf16 on "
                        "CUDA and fp32 on the CPU; bf16 without --config)")
    p.add_argument("--sdpa", choices=["flash", "default"], default=None,
                   help="flash: only the flash SDPA backend enabled (default on CUDA); default: let PyTorch choose")
    g = p.add_argument_group("model (GPT-2 124M by default)")
    g.add_argument("--n-layer", type=int, default=None)
    g.add_argument("--n-head", type=int, default=None)
    g.add_argument("--n-embd", type=int, default=None)
    g.add_argument("--vocab-size", type=int, default=None, help="unpadded (default 50257; with --config: data.tokenizer's)")
    g.add_argument("--context-length", type=int, default=None, help="position embedding rows (default: --seq-len)")
    g.add_argument("--no-vocab-mask", action="store_true", help="do not mask the padded vocabulary columns (nanoGPT/llm.c style)")
    g = p.add_argument_group("training")
    g.add_argument("--batch", type=int, default=None, help="sequences per step (default 16; with --config: train.batch_size)")
    g.add_argument("--seq-len", type=int, default=None)
    g.add_argument("--steps", type=int, default=None,
                   help="timed steps (default 50; with --config 35 and with --quick 4, as `engine bench train`)")
    g.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first, compilation happens in the first (default 10; with --config 5, --quick 2)")
    g.add_argument("--quick", action="store_true", help="--warmup 2 --steps 4: `engine bench train --quick`'s 6 steps")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--min-lr", type=float, default=None)
    g.add_argument("--warmup-steps", type=int, default=None, help="learning-rate warm-up steps (engine schedule)")
    g.add_argument("--beta1", type=float, default=None)
    g.add_argument("--beta2", type=float, default=None)
    g.add_argument("--eps", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--decay-all-params", action="store_true", default=None,
                   help="weight decay on every parameter (train.decay_all_params), not only the matmul weights")
    g.add_argument("--grad-clip", type=float, default=None, help="0 disables clipping")
    g.add_argument("--seed", type=int, default=None)
    g = p.add_argument_group("data")
    d = g.add_mutually_exclusive_group()
    d.add_argument("--data", help="directory made by `engine prepare` (dataset.json + train_*.bin); default: data.path of --config")
    d.add_argument("--synthetic", action="store_true", help="random token ids")
    g = p.add_argument_group("report")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s for MFU (default: logs.peak_tflops of --config, else the engine's "
                        "table by GPU name; the --json line falls back to 989, H100 SXM)")
    g.add_argument("--json", action="store_true", help="print one JSON line (last line of stdout)")
    g.add_argument("--results", metavar="FILE",
                   help="write a results file of the engine's format (engine-bench/1, docs/schemas/bench.schema.json) "
                        "for `engine bench compare`")
    g.add_argument("--label", default=None, help="impl name in the output (default torch-<mode>)")
    g.add_argument("--quiet", action="store_true", help="no per-step lines on stderr")
    args = p.parse_args(argv)

    # Values: an explicit flag, else --config (engine defaults for keys it omits), else the
    # script's own defaults.
    from_config = {}
    args.config_given_train = set()
    if args.config:
        cfg, args.config_given_train = read_config(args.config, args.set)
        c = lambda section, key: cfg[(section, key)]  # noqa: E731
        if c("train", "grad_accum") != 1:
            p.error(f"{args.config}: train.grad_accum = {c('train', 'grad_accum')}: this reference runs one micro-batch "
                    "per optimizer step (no gradient accumulation); use a config with train.grad_accum = 1")
        tokenizer = c("data", "tokenizer")
        if tokenizer not in TOKENIZER_VOCAB:
            p.error(f"{args.config}: data.tokenizer \"{tokenizer}\": expected one of {', '.join(TOKENIZER_VOCAB)}")
        tokens = c("batch", "tokens_per_step")
        if tokens is not None and tokens != c("train", "batch_size") * c("train", "seq_len"):
            p.error(f"{args.config}: batch.tokens_per_step = {tokens} is not train.batch_size x train.seq_len = "
                    f"{c('train', 'batch_size')} x {c('train', 'seq_len')}: the engine would accumulate gradients or "
                    "plan the micro-batch, which this reference does not; set train.batch_size and no tokens_per_step")
        if c("memory", "budget") is not None and "batch_size" not in args.config_given_train:
            print(f"warning: {args.config}: memory.budget without train.batch_size: the engine's planner chooses its "
                  f"micro-batch, this reference runs train.batch_size = {c('train', 'batch_size')} (the workloads' "
                  "micro_batch shows whether they agree)", file=sys.stderr)
        from_config = {
            "n_layer": c("model", "n_layer"), "n_head": c("model", "n_head"), "n_embd": c("model", "n_embd"),
            "context_length": c("model", "context_length"), "vocab_size": TOKENIZER_VOCAB[tokenizer],
            "batch": c("train", "batch_size"), "seq_len": c("train", "seq_len"),
            "lr": c("train", "lr"), "min_lr": c("train", "min_lr"), "warmup_steps": c("train", "warmup_steps"),
            "beta1": c("train", "beta1"), "beta2": c("train", "beta2"), "eps": c("train", "eps"),
            "weight_decay": c("train", "weight_decay"), "grad_clip": c("train", "grad_clip"),
            "decay_all_params": c("train", "decay_all_params"), "seed": c("run", "seed"),
        }
        args.config_device = c("run", "device")
        args.config_precision = c("train", "precision")
        args.config_peak_tflops = c("logs", "peak_tflops")
        args.tokenizer = tokenizer
        if args.data is None and not args.synthetic:
            if c("data", "path") is None:
                p.error(f"{args.config}: no data.path (the engine's embedded Tiny Shakespeare): this reference reads "
                        "directories made by `engine prepare`; set data.path (or --data, --synthetic)")
            args.data = c("data", "path")
    elif args.set:
        p.error("--set needs --config")
    else:
        args.config_device = args.config_precision = args.config_peak_tflops = None
        args.tokenizer = None
    if not args.data and not args.synthetic:
        p.error("one of --data, --synthetic or --config (with data.path) is required")
    for key, default in LEGACY_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, from_config.get(key, default))
    if args.steps is None or args.warmup is None:
        steps_kind = "quick" if args.quick else "full" if args.config else None
        warmup, timed = ENGINE_BENCH_STEPS[steps_kind] if steps_kind else (10, 50)
        args.warmup = warmup if args.warmup is None else args.warmup
        args.steps = timed if args.steps is None else args.steps
    if args.device is None:
        want = args.config_device or "auto"
        args.device = ("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want
    if args.dtype is None:
        precision = args.config_precision or "legacy"
        args.dtype = {"fp32": "fp32", "bf16": "bf16", "legacy": "bf16"}.get(
            precision, "bf16" if args.device.startswith("cuda") else "fp32")
    if args.context_length is None:
        args.context_length = args.seq_len
    for name in ("n_layer", "n_head", "n_embd", "vocab_size", "batch", "seq_len", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}")
    if args.seq_len > args.context_length:
        p.error(f"--seq-len {args.seq_len} is longer than --context-length {args.context_length}")
    return args


def environment(device):
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        env.update(
            gpu=prop.name,
            gpu_sms=prop.multi_processor_count,
            gpu_memory_bytes=prop.total_memory,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def percentile(sorted_xs, q):
    if not sorted_xs:
        return float("nan")
    k = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


# ---------------------------------------------------------------------------------------
# Results file (engine-bench/1: engine/src/bench, docs/schemas/bench.schema.json)
# ---------------------------------------------------------------------------------------

RESULTS_FORMAT = "engine-bench/1"

# engine/src/logs.rs PEAK_BF16_TFLOPS: dense bf16 peaks by GPU name; the first entry whose
# every word is in the name wins.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0),
]

# NVML's clock-event (throttle) reason bits, named as engine/src/telemetry.rs names them.
THROTTLE_BITS = [
    (0x1, "gpu_idle"), (0x2, "applications_clocks_setting"), (0x4, "sw_power_cap"), (0x8, "hw_slowdown"),
    (0x10, "sync_boost"), (0x20, "sw_thermal_slowdown"), (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"), (0x100, "display_clock_setting"),
]


def peak_tflops_for(name):
    words = set(name.replace("-", " ").split(" "))
    for key, tflops in PEAK_BF16_TFLOPS:
        if all(w in words for w in key.split(" ")):
            return tflops
    return None


def rust_float(x):
    """`x` as serde_json (1.0.154, the engine's Cargo.lock) writes an f64, so hashes agree.
    Python's repr is the same shortest round-trip digits but differs in two places:
    serde_json writes exponent -5 in decimal (0.00001, 0.000015; Python 1e-05, 1.5e-05) and
    smaller negative exponents without zero padding (1e-8; Python 1e-08). Non-finite values
    are null (serde_json's json! of NaN or infinity)."""
    if not math.isfinite(x):
        return "null"
    r = repr(float(x))
    if "e" not in r:
        return r
    mantissa, exponent = r.split("e")
    e = int(exponent)
    if e >= 0:
        return r  # 1e+16: the same in both
    sign = "-" if mantissa.startswith("-") else ""
    if e == -5:
        return sign + "0.0000" + mantissa.lstrip("-").replace(".", "")
    return f"{mantissa}e-{-e}"


def canonical_json(value):
    """Settings as engine/src/bench/mod.rs hash_settings serializes them: serde_json::Value
    with keys sorted, no whitespace, floats as serde_json writes them, strings unescaped
    UTF-8. Python ints are JSON integers, floats stay floats (1.0, never 1)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return rust_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{canonical_json(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {value!r}")


def hash_settings(settings):
    """First 16 hex digits of SHA-256 over the canonical JSON (engine hash_settings)."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


def workload_settings(args, precision, steps, warmup):
    """engine/src/bench/train.rs workload_settings, key for key and type for type (usize and
    u64 as ints, f64 as floats), for recompute "none" and one micro-batch per step."""
    if args.synthetic:
        data = {"path": None, "tokenizer": "synthetic"}  # no engine workload reads random ids
    else:
        data = {"path": args.data, "tokenizer": args.tokenizer or args.data_tokenizer}
    return {
        "suite": "train",
        "model": {"n_layer": int(args.n_layer), "n_head": int(args.n_head), "n_embd": int(args.n_embd),
                  "context_length": int(args.context_length), "vocab_size": int(args.vocab_size)},
        "seq_len": int(args.seq_len),
        "micro_batch": int(args.batch),
        "grad_accum": 1,
        "recompute": "none",
        "precision": precision,
        "data": data,
        "optimizer": {"lr": float(args.lr), "min_lr": float(args.min_lr), "warmup_steps": int(args.warmup_steps),
                      "beta1": float(args.beta1), "beta2": float(args.beta2), "eps": float(args.eps),
                      "weight_decay": float(args.weight_decay), "grad_clip": float(args.grad_clip)},
        "seed": int(args.seed),
        "steps": int(steps),
        "warmup": int(warmup),
    }


def run_quiet(cmd, cwd=None):
    """stdout of `cmd` stripped, or None when it cannot run or fails."""
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state():
    """(commit, dirty) of the repository holding this script, as engine/build.rs records
    them: `git rev-parse HEAD`, and whether `git status --porcelain --untracked-files=no`
    lists anything; ("unknown", None) outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    commit = run_quiet(["git", "-C", here, "rev-parse", "HEAD"])
    if not commit:
        return "unknown", None
    status = run_quiet(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"])
    return commit, (None if status is None else status != "")


def cuda_driver_version():
    """The CUDA version the driver supports, "13.0" (cuDriverGetVersion, as the engine),
    else from nvidia-smi's banner; None when neither answers."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value > 0:
            return f"{v.value // 1000}.{v.value % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    banner = run_quiet(["nvidia-smi"]) or ""
    for word in banner.split("CUDA Version:")[1:2]:
        return word.split()[0]
    return None


def nvml_facts(selector):
    """NVML's facts through nvidia-smi for the GPU `selector` (UUID, PCI bus id or index):
    (nvml object of the schema, None, pci_bus_id) or (None, why, "")."""
    fields = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,temperature.gpu,{},pci.bus_id,name"
    line = None
    for reasons in ("clocks_event_reasons.active", "clocks_throttle_reasons.active"):  # newer, older drivers
        out = run_quiet(["nvidia-smi", "-i", selector, f"--query-gpu={fields.format(reasons)}",
                         "--format=csv,noheader,nounits"])
        if out:
            line = out.splitlines()[0]
            break
    if line is None:
        why = "nvidia-smi not found" if run_quiet(["nvidia-smi", "-L"]) is None else f"nvidia-smi -i {selector} --query-gpu failed"
        return None, f"{why} (the reference reads NVML's facts through nvidia-smi)", ""
    parts = [x.strip() for x in line.split(",", 9)]
    if len(parts) != 10:
        return None, f"nvidia-smi answered {line!r}, not 10 fields", ""

    def num(text, kind):
        try:
            return kind(float(text)) if kind is int else float(text)
        except ValueError:
            return None  # "[N/A]", "[Not Supported]"

    try:
        mask = int(parts[7], 16)
        throttle = [name for bit, name in THROTTLE_BITS if mask & bit]
    except ValueError:
        throttle = []
    nvml = {
        "driver_version": parts[0],
        "name": parts[9],
        "sm_clock_mhz": num(parts[1], int),
        "max_sm_clock_mhz": num(parts[2], int),
        "memory_clock_mhz": num(parts[3], int),
        "max_memory_clock_mhz": num(parts[4], int),
        "power_limit_w": num(parts[5], float),
        "temperature_c": num(parts[6], int),
        "throttle_reasons": throttle,
    }
    return nvml, None, parts[8]


def bench_environment(device):
    """The `environment` object of engine/src/bench/env.rs, for this process."""
    commit, dirty = git_state()
    gpu = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        prop = torch.cuda.get_device_properties(index)
        major, minor = torch.cuda.get_device_capability(index)
        # nvidia-smi's GPU order can differ from CUDA's: select by UUID when torch has it.
        uuid = getattr(prop, "uuid", None)
        selector = str(index) if uuid is None else str(uuid) if str(uuid).startswith("GPU-") else f"GPU-{uuid}"
        nvml, note, pci = nvml_facts(selector)
        gpu = {
            "name": torch.cuda.get_device_name(index),
            "arch": f"sm_{major}{minor}",
            "sm_count": prop.multi_processor_count,
            "cuda_driver": cuda_driver_version() or f"unknown (torch built for CUDA {torch.version.cuda})",
            "nvrtc": None,
            "nvml": nvml,
            "nvml_note": note,
            "pci_bus_id": pci,
        }
        device_name = f"cuda:{index}"
    else:
        device_name = "cpu"
    model, cores = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            physical_id = "0"
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model == "unknown":
                    model = value
                elif key == "physical id":
                    physical_id = value
                elif key == "core id":
                    cores.add((physical_id, value))
    except OSError:
        pass
    host_memory = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    host_memory = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return {
        "engine_version": f"torch {torch.__version__}",
        "git_commit": commit,
        "git_dirty": dirty,
        "device": device_name,
        "gpu": gpu,
        "cpu": {"model": model, "logical_cores": os.cpu_count() or 1, "physical_cores": len(cores) or None},
        "host_memory": host_memory,
        "os": f"{platform.system()} {platform.release()}".strip(),
        "cpu_threads": torch.get_num_threads(),
    }


def results_entry(name, unit, better, values, workload):
    """engine Entry::from_values: median (mean of the middle two for an even count), min,
    max over the finite values; None when there are none."""
    v = sorted(x for x in values if math.isfinite(x))
    if not v:
        return None
    return {"name": name, "unit": unit, "better": better, "median": statistics.median(v), "min": v[0], "max": v[-1],
            "samples": len(v), "workload": workload}


def write_results(path, results):
    """Pretty JSON via a temporary file renamed into place (as Results::write)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    sdpa = args.sdpa or ("flash" if device.type == "cuda" else "default")
    if sdpa == "flash":
        if device.type != "cuda":
            raise SystemExit("error: --sdpa flash needs --device cuda")
        # Global backend switches (honoured by eager and by torch.compile when it traces):
        # only FlashAttention may run; a shape or dtype it cannot take is then an error,
        # never a silent fall-back to the math backend.
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(False)
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    model = GPT(args.vocab_size, args.context_length, args.n_layer, args.n_head, args.n_embd,
                mask_padding=not args.no_vocab_mask).to(device)
    n_params = model.num_params()
    flops_per_token = model.flops_per_token(args.seq_len)
    optimizer = make_optimizer(model, args, device)
    step_fn_model = model
    if args.mode == "compile":
        step_fn_model = torch.compile(model, mode=None if args.compile_mode == "default" else args.compile_mode)
    if args.synthetic:
        data = SyntheticWindows(args.seq_len, args.batch, args.seed, args.vocab_size)
    else:
        data = ShardWindows(args.data, args.seq_len, args.batch, args.seed, args.vocab_size)
        if args.tokenizer and data.tokenizer != args.tokenizer:
            raise SystemExit(f"error: {args.data}: tokenized with \"{data.tokenizer}\", the config's data.tokenizer is "
                             f"\"{args.tokenizer}\"")
    args.data_tokenizer = getattr(data, "tokenizer", None)
    # MFU's peak: --peak-tflops, else logs.peak_tflops of --config, else the engine's table by
    # GPU name (the CPU has none); the --json line and the summary fall back to 989.
    peak_tflops = args.peak_tflops or args.config_peak_tflops
    if peak_tflops is None and device.type == "cuda":
        peak_tflops = peak_tflops_for(torch.cuda.get_device_name(device))
    args.peak_tflops = peak_tflops or 989.0
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
           if args.dtype == "bf16" else contextlib.nullcontext())
    tokens_per_step = args.batch * args.seq_len
    total_steps = args.warmup + args.steps
    label = args.label or f"torch-{args.mode}"
    log(f"{label}: GPT-2 {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, vocab {args.vocab_size} "
        f"(padded {model.padded_vocab}), {n_params} parameters, {flops_per_token / 1e6:.1f} MFLOP/token; "
        f"B={args.batch} T={args.seq_len}; {args.dtype}; sdpa {sdpa}; device {device}; data {data.description}")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step(step, want_loss):
        lr = learning_rate(step, args.lr, args.min_lr, args.warmup_steps, total_steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x, y = to_device(data.next(), device)
        optimizer.zero_grad(set_to_none=True)
        with amp:
            loss = step_fn_model(x, y)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        return loss.detach() if want_loss else None

    def profile_step(step):
        """Runs warm-up step `step` under the profiler; returns the attention kernels seen and
        the 10 kernels with the most device time (evidence of which SDPA backend ran)."""
        try:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                loss = train_step(step, want_loss=True)
                sync()
            rows = []
            for evt in prof.key_averages():
                t = getattr(evt, "device_time_total", None)
                if t is None:
                    t = getattr(evt, "cuda_time_total", 0)
                if t and not evt.key.startswith(("aten::", "cuda", "Optimizer", "autograd", "torch", "Torch", "##")):
                    rows.append((t, evt.key))
            rows.sort(reverse=True)
            words = ("flash", "fmha", "attn", "attention", "sdpa", "cudnn")
            attn = sorted({k for _, k in rows if any(w in k.lower() for w in words)})
            total = sum(t for t, _ in rows) or 1
            top = [{"kernel": k[:160], "share": round(t / total, 4)} for t, k in rows[:10]]
            return loss, {"attention_kernels": [k[:160] for k in attn], "top_kernels": top}
        except Exception as e:  # the profiler is evidence, never a reason to fail the benchmark
            return None, {"error": f"{type(e).__name__}: {e}"[:300]}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_ms, step_tokens_per_s, losses = [], [], {}
    profiled = None
    compile_s = warmup_s = 0.0
    run_started = time.perf_counter()
    for step in range(total_steps):
        sync()
        t0 = time.perf_counter()
        loss = None
        if device.type == "cuda" and step == 1 and step < args.warmup:
            # The second warm-up step (after compilation) runs under the profiler.
            loss, profiled = profile_step(step)
        if loss is None:
            loss = train_step(step, want_loss=True)
        sync()
        dt = time.perf_counter() - t0
        # Reading the loss is outside the timed region (the step already synchronized).
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise SystemExit(f"error: step {step + 1}: loss is {loss_value}")
        losses[step + 1] = loss_value
        if step == 0:
            compile_s = dt
        if step < args.warmup:
            warmup_s += dt
            phase = "warm-up" + (" (incl. compile)" if step == 0 and args.mode == "compile" else "")
        else:
            step_ms.append(dt * 1e3)
            step_tokens_per_s.append(tokens_per_step / dt)
            phase = "timed"
        if step == 0 or (step + 1) % 10 == 0 or step + 1 == total_steps:
            log(f"step {step + 1}/{total_steps} ({phase}) | loss {loss_value:.4f} | {dt * 1e3:.1f} ms | "
                f"{tokens_per_step / dt:,.0f} tok/s")
    wall_s = time.perf_counter() - run_started

    s = sorted(step_ms)
    median_ms = statistics.median(s)
    tokens_per_s = tokens_per_step / (median_ms / 1e3)
    result = {
        "impl": label,
        "mode": args.mode,
        "compile_mode": args.compile_mode if args.mode == "compile" else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "dtype": args.dtype,
        "sdpa": sdpa,
        "model": {
            "n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd,
            "vocab_size": args.vocab_size, "padded_vocab": model.padded_vocab,
            "context_length": args.context_length, "vocab_mask": model.mask_padding,
        },
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens_per_step": tokens_per_step,
        "n_params": n_params,
        "flops_per_token": flops_per_token,
        "optimizer": {"lr": args.lr, "min_lr": args.min_lr, "warmup_steps": args.warmup_steps,
                      "betas": [args.beta1, args.beta2], "eps": args.eps, "weight_decay": args.weight_decay,
                      "grad_clip": args.grad_clip, "fused": device.type == "cuda"},
        "seed": args.seed,
        "data": data.description,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "step_ms_median": median_ms,
        "step_ms_mean": statistics.fmean(s),
        "step_ms_min": s[0],
        "step_ms_p10": percentile(s, 0.10),
        "step_ms_p90": percentile(s, 0.90),
        "step_ms_max": s[-1],
        "step_ms_stdev": statistics.stdev(s) if len(s) > 1 else 0.0,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_mean": tokens_per_step * len(s) / (sum(s) / 1e3),
        "achieved_tflops": tokens_per_s * flops_per_token / 1e12,
        "peak_tflops": args.peak_tflops,
        "mfu": tokens_per_s * flops_per_token / (args.peak_tflops * 1e12),
        "compile_s": compile_s if args.mode == "compile" else None,
        "first_step_s": compile_s,
        "warmup_s": warmup_s,
        "wall_s": wall_s,
        "peak_memory_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_memory_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
        "loss_first": losses[1],
        "loss_last": losses[total_steps],
        "step_ms": [round(x, 3) for x in step_ms],
        "profile_warmup_step_2": profiled,
        "env": environment(device),
    }
    mem = result["peak_memory_allocated_bytes"]
    log(f"{label}: median {median_ms:.2f} ms/step (p10 {result['step_ms_p10']:.2f}, p90 {result['step_ms_p90']:.2f}) = "
        f"{tokens_per_s:,.0f} tokens/s, MFU {result['mfu'] * 100:.1f}% of {args.peak_tflops:g} TFLOP/s"
        + (f", compile {compile_s:.1f} s" if args.mode == "compile" else "")
        + (f", peak memory {mem / 2**30:.2f} GiB" if mem is not None else "")
        + f"; loss {losses[1]:.4f} -> {losses[total_steps]:.4f}")
    if profiled is not None:
        log(f"{label}: attention kernels seen in warm-up step 2: {profiled.get('attention_kernels', profiled.get('error'))}")
    if args.results:
        precision = args.dtype
        settings = workload_settings(args, precision, total_steps, args.warmup)
        workload = hash_settings(settings)
        stem = os.path.splitext(os.path.basename(args.config))[0] if args.config else "reference"
        name = lambda metric: f"train/{stem}/none/{metric}"  # noqa: E731
        entries = [
            results_entry(name("tokens_per_s"), "tokens/s", "higher", step_tokens_per_s, workload),
            results_entry(name("mfu"), "fraction", "higher",
                          [flops_per_token * r / (peak_tflops * 1e12) for r in step_tokens_per_s] if peak_tflops else [],
                          workload),
            results_entry(name("step_ms"), "ms", "lower", step_ms, workload),
            results_entry(name("peak_memory"), "bytes", "lower",
                          [float(torch.cuda.max_memory_allocated(device))] if device.type == "cuda" else [], workload),
        ]
        results = {
            "format": RESULTS_FORMAT,
            "suite": "train",
            "implementation": label,
            "created": created,
            "environment": bench_environment(device),
            "workloads": {workload: {"hash": workload, "settings": settings}},
            "entries": [e for e in entries if e is not None],
        }
        write_results(args.results, results)
        log(f"{label}: results {args.results} (workload {workload}, {len(results['entries'])} entries)")
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"{label} tokens/s {tokens_per_s:.0f} mfu {result['mfu']:.4f} step_ms {median_ms:.3f}")


if __name__ == "__main__":
    main()

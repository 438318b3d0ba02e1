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
--peak-tflops (989 for an H100 SXM).

Data: --data DIR, a directory made by `engine prepare` (dataset.json + llm.c uint16/uint32
shards), read as the engine reads it: non-overlapping windows of T+1 tokens starting at
multiples of T within each shard, visited in a fresh seeded permutation every epoch (the
permutation itself differs from the engine's, the windows do not). Or --synthetic:
uniformly random token ids below the vocabulary, drawn with the seed.

Examples:
  python benches/reference/gpt2_train_torch.py --mode compile --data data/shakespeare-gpt2 --batch 16 --json
  python benches/reference/gpt2_train_torch.py --device cpu --n-layer 2 --n-embd 64 --n-head 2 \
      --seq-len 64 --batch 2 --steps 3 --synthetic          # smoke test, no GPU
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

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
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else no_decay).append(p)
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["eager", "compile"], default="eager")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default, reduce-overhead, max-autotune, ...)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype (parameters stay fp32)")
    p.add_argument("--sdpa", choices=["flash", "default"], default=None,
                   help="flash: only the flash SDPA backend enabled (default on CUDA); default: let PyTorch choose")
    g = p.add_argument_group("model (GPT-2 124M by default)")
    g.add_argument("--n-layer", type=int, default=12)
    g.add_argument("--n-head", type=int, default=12)
    g.add_argument("--n-embd", type=int, default=768)
    g.add_argument("--vocab-size", type=int, default=50257)
    g.add_argument("--context-length", type=int, default=None, help="position embedding rows (default: --seq-len)")
    g.add_argument("--no-vocab-mask", action="store_true", help="do not mask the padded vocabulary columns (nanoGPT/llm.c style)")
    g = p.add_argument_group("training")
    g.add_argument("--batch", type=int, default=16)
    g.add_argument("--seq-len", type=int, default=1024)
    g.add_argument("--steps", type=int, default=50, help="timed steps")
    g.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens in the first)")
    g.add_argument("--lr", type=float, default=6e-4)
    g.add_argument("--min-lr", type=float, default=6e-5)
    g.add_argument("--warmup-steps", type=int, default=0, help="learning-rate warm-up steps (engine schedule)")
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.95)
    g.add_argument("--eps", type=float, default=1e-8)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    g.add_argument("--seed", type=int, default=1337)
    g = p.add_argument_group("data")
    d = g.add_mutually_exclusive_group(required=True)
    d.add_argument("--data", help="directory made by `engine prepare` (dataset.json + train_*.bin)")
    d.add_argument("--synthetic", action="store_true", help="random token ids")
    g = p.add_argument_group("report")
    g.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s for MFU (H100 SXM: 989)")
    g.add_argument("--json", action="store_true", help="print one JSON line (last line of stdout)")
    g.add_argument("--label", default=None, help="impl name in the output (default torch-<mode>)")
    g.add_argument("--quiet", action="store_true", help="no per-step lines on stderr")
    args = p.parse_args(argv)
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


def main(argv=None):
    args = parse_args(argv)
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
    step_ms, losses = [], {}
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
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"{label} tokens/s {tokens_per_s:.0f} mfu {result['mfu']:.4f} step_ms {median_ms:.3f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""PyTorch at the shapes of `engine bench kernels`: the reference for our attention (and,
where the engine had no cuBLASLt to time, for our GEMM), written as an engine-bench/1
results file that `engine bench compare` puts beside the engine's (docs/BENCHMARKS.md,
"One-command GPU session").

The shapes are not chosen here: they are read from the engine's own results file
(--engine-results, written by `engine bench kernels --out FILE` on the same machine), from
the workloads its entries name. The PyTorch file reuses those workloads (settings and hash,
the hash checked against this script's own canonical JSON, benches/reference/
gpt2_train_torch.py canonical_json) and the engine's entry names, so each pair lines up:

- attention (workload op "attention": B, T, C, NH, dtype): F.scaled_dot_product_attention
  (is_causal=True) on q, k, v taken from one packed (B, T, 3C) tensor as the PyTorch GPT-2
  takes them (split, view (B, T, NH, HS), transpose to (B, NH, T, HS); the engine's kernel
  reads the same packed tensor), output back to (B, T, C). On CUDA only the flash backend
  is allowed (--sdpa flash, the default there; if PyTorch has no flash kernel for the
  shape or dtype the run falls back to PyTorch's default choice and says so in the
  implementation name, torch-sdpa instead of torch-sdpa-flash). forward: the training
  forward (inputs require grad, so the log-sum-exp is saved as in training);
  backward: autograd from dy to dqkv (B, T, 3C) through a graph built once per buffer set
  (retain_graph), i.e. flash's backward plus the gradient of the split, which is what a
  PyTorch training step runs. Entries kernels/attention_forward/{time_ms,tflops},
  kernels/attention_backward/{time_ms,tflops}; FLOPs as the engine counts them (causal:
  4*B*T*T*C/2 forward, twice that backward).
- GEMM (--gemm auto: only when the engine's file has no kernels/cublaslt/ entries, i.e. its
  cuBLASLt comparison was skipped; yes: always; no: never): torch.mm / torch.addmm (bias)
  into a preallocated output at the engine's matmul_qkv, matmul_fc, matmul_lm_head forward
  shapes (M, K, N, weight layout, bias) and its ceiling GEMM: kernels/matmul_<s>_forward/
  {time_ms,tflops} and kernels/ceiling/gemm_tflops. Backward GEMMs are not timed (the
  engine accumulates dW in f32, which has no one-call PyTorch counterpart).

Method, as the engine's (engine/src/bench/kernels.rs): the workload's warm-up passes, then
its repeats, each timed alone between two CUDA events (host clock on the CPU); inputs
rotate over the workload's buffer_sets independent sets; before the repeats the stream is
stalled (torch.cuda._sleep) so that they are queued back to back and no repeat's time holds
the host's launch latency. Median, min and max over the repeats; a rate entry is the work
over the time entry's median (min from the slowest repeat, max from the fastest). Input
values are PyTorch's uniform random numbers from the workload's seed (not the engine's
generator: the same distribution, not the same values).

Example (after `engine bench kernels --out engine-kernels.json`):
  python3 benches/reference/ops_torch.py --engine-results engine-kernels.json --results torch-ops.json
  engine bench compare engine-kernels.json torch-ops.json
"""

import argparse
import datetime
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_train_torch as ref  # noqa: E402  (the results-file helpers: environment, hashes)

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
# Cycles the stream is stalled before the repeats are queued: ~25 ms at 2 GHz.
STALL_CYCLES = 50_000_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine-results", required=True, metavar="FILE",
                   help="the engine's `engine bench kernels` results file: the shapes and method come from its workloads")
    p.add_argument("--results", required=True, metavar="FILE", help="where to write this run's engine-bench/1 file")
    p.add_argument("--details", metavar="FILE",
                   help="also write a JSON of what the results file has no room for: SDPA backend, kernels seen, every repeat")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N (default: the engine file's device: cuda when it ran on a GPU)")
    p.add_argument("--sdpa", choices=["flash", "default"], default=None,
                   help="flash: only FlashAttention may run (the default on CUDA); default: PyTorch's own choice")
    p.add_argument("--gemm", choices=["auto", "yes", "no"], default="auto",
                   help="time torch.mm at the engine's GEMM shapes: auto = only if the engine file has no cuBLASLt entries")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def log(args, *a):
    if not args.quiet:
        print("ops_torch:", *a, file=sys.stderr, flush=True)


def read_engine(path):
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --engine-results {path}: cannot read: {e}")
    if r.get("format") != ref.RESULTS_FORMAT or r.get("suite") not in ("kernels", "all"):
        raise SystemExit(f"error: {path}: not an engine-bench/1 file of the kernels suite "
                         f"(format {r.get('format')!r}, suite {r.get('suite')!r}); write it with `engine bench kernels --out FILE`")
    return r


def workload_of(engine, entry_name):
    """(hash, settings) of the workload the engine's entry `entry_name` measured, or None."""
    for e in engine["entries"]:
        if e["name"] == entry_name:
            w = engine["workloads"][e["workload"]]
            return e["workload"], w["settings"]
    return None


def uniform(shape, lo, hi, dtype, device, gen):
    x = torch.rand(shape, generator=gen, dtype=torch.float32, device="cpu")
    return (lo + (hi - lo) * x).to(device=device, dtype=dtype)


class Timer:
    """The engine's method: warm-up, a stalled stream, one event pair per repeat."""

    def __init__(self, device, warmup, repeats):
        self.device, self.warmup, self.repeats = device, warmup, repeats

    def time(self, sets, pass_fn):
        for i in range(self.warmup):
            pass_fn(i % sets)
        if self.device.type != "cuda":
            times = []
            for r in range(self.repeats):
                t0 = time.perf_counter()
                pass_fn((self.warmup + r) % sets)
                times.append((time.perf_counter() - t0) * 1e3)
            return times
        torch.cuda.synchronize(self.device)
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(STALL_CYCLES)
        marks = []
        for r in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            pass_fn((self.warmup + r) % sets)
            end.record()
            marks.append((start, end))
        torch.cuda.synchronize(self.device)
        return [a.elapsed_time(b) for a, b in marks]


def time_entry(name, workload, times):
    e = ref.results_entry(name, "ms", "lower", times, workload)
    if e is None:
        raise SystemExit(f"error: {name}: no finite time was measured")
    return e


def rate_entry(name, unit, time_e, amount):
    """engine kernels.rs rate_entry: amount per second at the median, slowest and fastest repeat."""
    return {"name": name, "unit": unit, "better": "higher", "median": amount / (time_e["median"] / 1e3),
            "min": amount / (time_e["max"] / 1e3), "max": amount / (time_e["min"] / 1e3),
            "samples": time_e["samples"], "workload": time_e["workload"]}


def sdpa_context(mode):
    """A context in which only the flash backend may run (mode "flash"), else a no-op."""
    import contextlib
    if mode != "flash":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    except ImportError:  # older PyTorch
        return torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False)


def attention(args, engine, device, results, details, sdpa):
    fwd = workload_of(engine, "kernels/attention_forward/time_ms")
    bwd = workload_of(engine, "kernels/attention_backward/time_ms")
    if fwd is None:
        raise SystemExit(f"error: {args.engine_results} has no kernels/attention_forward/time_ms entry")
    workload, s = fwd
    b, t, c, nh = int(s["B"]), int(s["T"]), int(s["C"]), int(s["NH"])
    hs = c // nh
    dtype = DTYPES[s["dtype"]]
    sets, timer = int(s["buffer_sets"]), Timer(device, int(s["warmup"]), int(s["repeats"]))
    gen = torch.Generator().manual_seed(int(s.get("seed", 1337)))
    log(args, f"attention B={b} T={t} C={c} NH={nh} (HS {hs}) {s['dtype']}, {sets} buffer sets, "
              f"{timer.warmup} warm-up + {timer.repeats} repeats, sdpa {sdpa}")

    def forward(qkv):
        q, k, v = qkv.split(c, dim=2)
        q, k, v = (x.view(b, t, nh, hs).transpose(1, 2) for x in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(b, t, c)

    data = []
    for _ in range(sets):
        qkv = uniform((b, t, 3 * c), -1.0, 1.0, dtype, device, gen).requires_grad_(True)
        dout = uniform((b, t, c), -1.0, 1.0, dtype, device, gen)
        data.append([qkv, dout, None])
    backend = sdpa
    with sdpa_context(sdpa):
        try:
            forward(data[0][0])
        except RuntimeError as e:
            if sdpa != "flash":
                raise
            backend = "default"
            details["sdpa_flash_unavailable"] = str(e)[:500]
            log(args, f"flash SDPA unavailable here ({str(e).splitlines()[0][:200]}); PyTorch's default backend instead")
    details["sdpa_backend"] = backend
    flops = 4.0 * b * t * t * c / 2.0  # engine ops.rs attention_forward_flops
    with sdpa_context(backend):
        details["attention_kernels"] = kernels_seen(device, lambda: torch.autograd.grad(forward(data[0][0]), data[0][0], data[0][1]))
        times_f = timer.time(sets, lambda i: forward(data[i][0]))
        for d in data:  # one graph per set, kept for the repeated backward
            d[2] = forward(d[0])
        times_b = timer.time(sets, lambda i: torch.autograd.grad(data[i][2], data[i][0], data[i][1], retain_graph=True))
    tf = time_entry("kernels/attention_forward/time_ms", workload, times_f)
    results["entries"] += [tf, rate_entry("kernels/attention_forward/tflops", "TFLOP/s", tf, flops / 1e12)]
    used = {workload}
    if bwd is not None:
        tb = time_entry("kernels/attention_backward/time_ms", bwd[0], times_b)
        results["entries"] += [tb, rate_entry("kernels/attention_backward/tflops", "TFLOP/s", tb, 2.0 * flops / 1e12)]
        used.add(bwd[0])
    details["repeats_ms"]["attention_forward"] = times_f
    details["repeats_ms"]["attention_backward"] = times_b
    for name, e in (("forward", tf), ("backward", tb if bwd else None)):
        if e:
            log(args, f"attention {name}: {e['median']:.4f} ms (min {e['min']:.4f}, max {e['max']:.4f})")
    del data
    return used, backend


def gemm(args, engine, device, results, details):
    """torch.mm at the engine's forward GEMM shapes; returns the workloads used."""
    used = set()
    shapes = [("qkv", "kernels/matmul_qkv_forward/time_ms"), ("fc", "kernels/matmul_fc_forward/time_ms"),
              ("lm_head", "kernels/matmul_lm_head_forward/time_ms")]
    ceiling = next((e for e in engine["entries"] if e["name"] == "kernels/ceiling/gemm_tflops"), None)
    jobs = []
    for name, entry in shapes:
        w = workload_of(engine, entry)
        if w is not None:
            jobs.append((name, f"kernels/matmul_{name}_forward", w))
    if ceiling is not None:
        jobs.append(("ceiling", "kernels/ceiling/gemm", (ceiling["workload"], engine["workloads"][ceiling["workload"]]["settings"])))
    for name, prefix, (workload, s) in jobs:
        m, k, n = int(s["M"]), int(s["K"]), int(s["N"])
        layout, bias = s.get("layout", "InOut"), bool(s.get("bias", False))
        dtype = DTYPES[s["dtype"]]
        sets, timer = int(s["buffer_sets"]), Timer(device, int(s["warmup"]), int(s["repeats"]))
        gen = torch.Generator().manual_seed(int(s.get("seed", 1337)))
        data = []
        for _ in range(sets):
            inp = uniform((m, k), -1.0, 1.0, dtype, device, gen)
            w = uniform((k, n) if layout == "InOut" else (n, k), -0.1, 0.1, dtype, device, gen)
            bvec = uniform((n,), -0.1, 0.1, dtype, device, gen) if bias else None
            out = torch.empty((m, n), dtype=dtype, device=device)
            data.append((inp, w if layout == "InOut" else w.t(), bvec, out))

        def one(i):
            inp, w, bvec, out = data[i]
            if bvec is None:
                torch.mm(inp, w, out=out)
            else:
                torch.addmm(bvec, inp, w, out=out)

        times = timer.time(sets, one)
        te = time_entry(f"{prefix}/time_ms" if name != "ceiling" else "kernels/ceiling/gemm_ms", workload, times)
        rate = rate_entry(f"{prefix}/tflops" if name != "ceiling" else "kernels/ceiling/gemm_tflops", "TFLOP/s", te,
                          2.0 * m * n * k / 1e12)
        # The engine's file has no ceiling time entry, only the rate.
        results["entries"] += [rate] if name == "ceiling" else [te, rate]
        details["repeats_ms"][f"matmul_{name}_forward"] = times
        used.add(workload)
        log(args, f"torch.mm {name} M={m} K={k} N={n} {layout}{' +bias' if bias else ''}: {te['median']:.4f} ms, "
                  f"{rate['median']:.4g} TFLOP/s")
        del data
    return used


def kernels_seen(device, fn):
    """The names of the device kernels one call of `fn` ran (evidence of the SDPA backend);
    None on the CPU or when the profiler fails."""
    if device.type != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        return sorted({evt.key[:160] for evt in prof.key_averages() if not evt.key.startswith(("aten::", "cuda"))})
    except Exception as e:  # evidence only, never a reason to fail
        return [f"profiler failed: {type(e).__name__}: {e}"[:300]]


def main(argv=None):
    args = parse_args(argv)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    engine = read_engine(args.engine_results)
    engine_device = engine["environment"]["device"]
    device = torch.device(args.device or ("cuda" if engine_device.startswith("cuda") else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    if (device.type == "cuda") != engine_device.startswith("cuda"):
        log(args, f"warning: the engine's results are from {engine_device}, this run is on {device}")
    sdpa = args.sdpa or ("flash" if device.type == "cuda" else "default")
    if sdpa == "flash" and device.type != "cuda":
        raise SystemExit("error: --sdpa flash needs --device cuda")
    # As the training reference sets them (no effect on bf16 work).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    results = {"format": ref.RESULTS_FORMAT, "suite": "kernels", "implementation": "torch", "created": created,
               "environment": ref.bench_environment(device), "workloads": {}, "entries": []}
    details = {"engine_results": os.path.abspath(args.engine_results), "device": str(device), "torch": torch.__version__,
               "cuda": torch.version.cuda, "repeats_ms": {}, "hash_mismatches": []}
    started = time.perf_counter()
    used, backend = attention(args, engine, device, results, details, sdpa)
    has_cublaslt = any(e["name"].startswith("kernels/cublaslt/") for e in engine["entries"])
    do_gemm = args.gemm == "yes" or (args.gemm == "auto" and not has_cublaslt)
    details["gemm"] = {"timed": do_gemm, "why": f"--gemm {args.gemm}, engine file {'has' if has_cublaslt else 'has no'} cuBLASLt entries"}
    if do_gemm:
        used |= gemm(args, engine, device, results, details)
    else:
        log(args, f"GEMM not timed here ({details['gemm']['why']})")
    for h in sorted(used):
        w = engine["workloads"][h]
        mine = ref.hash_settings(w["settings"])
        if mine != h:  # the canonical JSON drifted from serde_json's: compare still lines the entries up
            details["hash_mismatches"].append({"engine": h, "here": mine})
            log(args, f"warning: workload {h}: this script hashes its settings to {mine}")
        results["workloads"][h] = {"hash": h, "settings": w["settings"]}
    label = "torch-sdpa-flash" if backend == "flash" else "torch-sdpa"
    results["implementation"] = label + ("+mm" if do_gemm else "")
    details["implementation"] = results["implementation"]
    details["wall_s"] = time.perf_counter() - started
    ref.write_results(args.results, results)
    if args.details:
        with open(args.details, "w") as f:
            json.dump(details, f, indent=1)
    log(args, f"results {args.results} ({results['implementation']}, {len(results['entries'])} entries, "
              f"{details['wall_s']:.1f} s)")
    for e in results["entries"]:
        print(f"{e['name']} | {e['median']:.6g} {e['unit']} | {e['min']:.6g} | {e['max']:.6g} | {e['samples']}")


if __name__ == "__main__":
    main()

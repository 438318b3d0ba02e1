#!/usr/bin/env python3
"""Check that an engine checkpoint loads in Hugging Face transformers and gives
the same validation loss as the engine itself.

Usage:
  /work/refenv/bin/python scripts/hf_check.py CHECKPOINT_DIR [--engine PATH] [--batches N]

Steps:
  1. Run `ENGINE eval CHECKPOINT_DIR --json --dump-tokens FILE [--batches N]`.
     The engine prints one JSON line ({"val_loss", "windows", "seq_len"}) and
     writes the exact token windows it evaluated (safetensors, `tokens` int32
     [windows, seq_len+1]) so both sides see identical inputs.
  2. Load CHECKPOINT_DIR with `GPT2LMHeadModel.from_pretrained` in float32.
  3. Recompute the mean cross-entropy over all windows*seq_len positions and
     compare. Exit 0 if |diff| <= tol (default 1e-4), else 1.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ENGINE = os.path.join(REPO_ROOT, "target", "release", "engine")

# The tied output projection is legitimately absent from the checkpoint.
ALLOWED_MISSING = {"lm_head.weight"}


def fail(msg: str) -> int:
    print(f"FAIL: {msg}", file=sys.stderr)
    return 1


def run_engine(engine, ckpt_dir, tokens_path, batches):
    cmd = [engine, "eval", ckpt_dir, "--json", "--dump-tokens", tokens_path]
    if batches is not None:
        cmd += ["--batches", str(batches)]
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"engine exited with status {proc.returncode}")
    # The contract is a single JSON line on stdout; tolerate stray log lines by
    # taking the last line that parses as a JSON object.
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    sys.stderr.write(proc.stdout)
    raise RuntimeError("engine printed no JSON line on stdout")


@torch.no_grad()
def hf_mean_loss(model, tokens, batch_size):
    # Sum per-token losses and divide once at the end so the result is the
    # mean over all positions regardless of how the windows are batched.
    total = 0.0
    count = 0
    for i in range(0, tokens.size(0), batch_size):
        chunk = tokens[i : i + batch_size].long()
        x, y = chunk[:, :-1], chunk[:, 1:]
        logits = model(input_ids=x).logits
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
        )
        total += loss_sum.item()  # accumulate in Python float (f64)
        count += y.numel()
    return total / count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint_dir")
    ap.add_argument("--engine", default=DEFAULT_ENGINE, help=f"engine binary (default: {DEFAULT_ENGINE})")
    ap.add_argument("--batches", type=int, default=None, help="passed through to `engine eval`")
    ap.add_argument("--batch-size", type=int, default=16, help="windows per HF forward pass")
    ap.add_argument("--tol", type=float, default=1e-4, help="max allowed |engine - hf| loss difference")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()  # keep the output to the comparison itself
    ckpt_dir = os.path.abspath(args.checkpoint_dir)
    # A run directory stands for its newest checkpoint, as it does for `engine eval`.
    latest = os.path.join(ckpt_dir, "checkpoints", "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            ckpt_dir = os.path.join(ckpt_dir, "checkpoints", f.read().strip())
    if not os.path.isdir(ckpt_dir):
        return fail(f"checkpoint dir not found: {ckpt_dir}")

    with tempfile.TemporaryDirectory(prefix="hf_check_") as tmp:
        tokens_path = os.path.join(tmp, "tokens.safetensors")
        try:
            report = run_engine(args.engine, ckpt_dir, tokens_path, args.batches)
        except (OSError, RuntimeError) as e:
            return fail(f"could not run engine: {e}")
        if not os.path.exists(tokens_path):
            return fail(f"engine did not write --dump-tokens file {tokens_path}")
        tokens = load_file(tokens_path)["tokens"]

    engine_loss = float(report["val_loss"])
    print(f"engine: {json.dumps(report)}")

    if tokens.dim() != 2:
        return fail(f"tokens must be 2-D [windows, seq_len+1], got shape {tuple(tokens.shape)}")
    windows, seq_len = tokens.size(0), tokens.size(1) - 1
    if "windows" in report and int(report["windows"]) != windows:
        return fail(f"engine reports windows={report['windows']} but dumped {windows}")
    if "seq_len" in report and int(report["seq_len"]) != seq_len:
        return fail(f"engine reports seq_len={report['seq_len']} but dumped {seq_len}")

    model, info = GPT2LMHeadModel.from_pretrained(
        ckpt_dir, torch_dtype=torch.float32, output_loading_info=True
    )
    model.eval()
    assert next(model.parameters()).dtype == torch.float32
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = info.get("mismatched_keys", [])
    print(f"missing keys:    {missing if missing else 'none'}")
    print(f"unexpected keys: {unexpected if unexpected else 'none'}")
    if mismatched:
        print(f"mismatched keys: {mismatched}")
    bad_missing = [k for k in missing if k not in ALLOWED_MISSING]
    if bad_missing:
        return fail(f"checkpoint is missing weights: {bad_missing}")
    if mismatched:
        return fail("checkpoint has shape-mismatched weights")

    cfg = model.config
    # If lm_head is missing from the file it must come from the tie, otherwise
    # HF would silently leave it randomly initialised.
    if not cfg.tie_word_embeddings and "lm_head.weight" in missing:
        return fail("lm_head.weight missing and config.tie_word_embeddings is false")
    if cfg.tie_word_embeddings and not torch.equal(model.lm_head.weight, model.transformer.wte.weight):
        return fail("config says tied embeddings but lm_head != wte after loading")
    if seq_len > cfg.n_positions:
        return fail(f"seq_len {seq_len} exceeds n_positions {cfg.n_positions}")
    tmax = int(tokens.max())
    if tokens.min() < 0 or tmax >= cfg.vocab_size:
        return fail(f"token ids outside [0, {cfg.vocab_size}): max={tmax}")

    hf_loss = hf_mean_loss(model, tokens, args.batch_size)
    diff = abs(engine_loss - hf_loss)
    print(
        f"windows={windows} seq_len={seq_len} vocab={cfg.vocab_size} "
        f"n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd}"
    )
    print(f"engine val_loss: {engine_loss:.7f}")
    print(f"hf     val_loss: {hf_loss:.7f}")
    print(f"|diff|:          {diff:.3e} (tol {args.tol:.0e})")
    if not diff <= args.tol:  # also catches NaN
        return fail(f"engine and transformers disagree: |diff| = {diff:.3e} > {args.tol:.0e}")
    print("OK: checkpoint loads in transformers and losses match")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The engine against Hugging Face `transformers`, on the CPU (issue 15's acceptance):

1. `save_pretrained` directories of a tiny random GPT-2 (GPT2LMHeadModel, saved with its
   `transformer.` prefix) and a tiny random Llama (LlamaForCausalLM, grouped-query attention,
   untied head) made here: `engine eval DIR` gives transformers' loss on the same windows
   (within 1e-4) and `engine sample DIR --temperature 0` (greedy) gives transformers' greedy
   tokens exactly.
2. Fine-tuning: `engine train` with `model.init_from = DIR` lowers the validation loss the
   directory starts with.
3. A tiny `kind = "llama"` config and a GPT-2 of about the same size train for the same
   steps on Tiny Shakespeare; the Llama's validation loss is within 2% of (or below) the
   GPT-2's; its checkpoint loads with `AutoModelForCausalLM.from_pretrained` and gives the
   engine's loss (within 1e-4) and the engine's greedy continuation.

With a CHECKPOINT argument (a checkpoint or run directory of any kind transformers reads:
GPT-2, Llama) it only compares that checkpoint: loss on the engine's windows and greedy tokens.

Needs torch and transformers (CPU is enough):
    python3 -m venv .venv-hf && .venv-hf/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    .venv-hf/bin/pip install transformers safetensors
    cargo build --release -p engine
    .venv-hf/bin/python scripts/hf_check.py [--steps 800] [--out DIR]
    .venv-hf/bin/python scripts/hf_check.py runs/shakespeare-char
Prints one line per check and exits non-zero if any fails.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "target", "release", "engine")
SHIPPED = os.path.join(ROOT, "configs", "shakespeare-char.toml")
LOSS_TOLERANCE = 1e-4
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def engine(*args):
    out = subprocess.run([ENGINE, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"engine {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def engine_json(*args):
    return json.loads(engine(*args).strip().splitlines()[-1])


def torch_loss(model, tokens):
    """Mean next-token cross-entropy over windows (N, T+1), as the engine computes it."""
    with torch.no_grad():
        x, y = tokens[:, :-1], tokens[:, 1:]
        logits = model(input_ids=x).logits.double()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()


def torch_greedy(model, prompt, n):
    with torch.no_grad():
        ids = torch.tensor([prompt])
        for _ in range(n):
            window = ids[:, -model.config.max_position_embeddings:]
            nxt = model(input_ids=window).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        return ids[0, len(prompt):].tolist()


def compare(name, directory, model, work, batches=2, sample_tokens=24):
    """engine eval / sample on `directory` against `model` (transformers) on the same windows."""
    dump = os.path.join(work, f"{name}-tokens.safetensors")
    got = engine_json("eval", directory, "--device", "cpu", "--json", "--batches", str(batches), "--dump-tokens", dump)
    tokens = load_file(dump)["tokens"].long()
    want = torch_loss(model, tokens)
    check(f"{name}: eval loss", abs(got["val_loss"] - want) <= LOSS_TOLERANCE,
          f"engine {got['val_loss']:.6f}, transformers {want:.6f} on {tokens.shape[0]} windows of {tokens.shape[1] - 1} tokens (|diff| {abs(got['val_loss'] - want):.2e}, tolerance {LOSS_TOLERANCE})")
    s = engine_json("sample", directory, "--device", "cpu", "--json", "--temperature", "0", "--top-k", "1", "--tokens", str(sample_tokens), "--prompt", "ROMEO:")
    greedy = torch_greedy(model, s["prompt_tokens"], sample_tokens)
    check(f"{name}: greedy tokens", greedy == s["tokens"], f"engine {s['tokens']}, transformers {greedy}")
    return got["val_loss"]


def random_models(work):
    torch.manual_seed(0)
    # initializer_range well above the default 0.02, so the logits are far from uniform and
    # a wrong weight shows in the loss.
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2)).eval()
    gpt2_dir = os.path.join(work, "hf-gpt2")
    gpt2.save_pretrained(gpt2_dir)
    names = list(load_file(os.path.join(gpt2_dir, "model.safetensors")).keys())
    check("gpt2 directory is save_pretrained's", any(n.startswith("transformer.") for n in names), f"{len(names)} tensors, e.g. {names[0]}")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                                         tie_word_embeddings=False, initializer_range=0.2)).eval()
    llama_dir = os.path.join(work, "hf-llama")
    llama.save_pretrained(llama_dir)
    return (gpt2_dir, gpt2), (llama_dir, llama)


def fine_tune(name, directory, work, start_loss, steps):
    config = os.path.join(work, f"finetune-{name}.toml")
    with open(config, "w") as f:
        f.write(f"[run]\nname = \"finetune-{name}\"\nout_dir = '{work}'\ndevice = \"cpu\"\n[model]\ninit_from = '{directory}'\n"
                f"[train]\nseq_len = 64\nbatch_size = 16\nmax_steps = {steps}\nlr = 1e-3\nmin_lr = 1e-4\nwarmup_steps = 5\neval_interval = 0\neval_batches = 4\n")
    engine("train", config, "--quiet")
    after = engine_json("eval", os.path.join(work, f"finetune-{name}"), "--device", "cpu", "--json", "--batches", "2")["val_loss"]
    check(f"{name}: fine-tuning from init_from lowers validation loss", after < start_loss, f"{start_loss:.4f} (the directory) -> {after:.4f} after {steps} steps")


def llama_vs_gpt2(work, steps):
    common = ["--quiet", "--set", f"run.out_dir='{work}'", "--set", "run.device=cpu", "--set", f"train.max_steps={steps}",
              "--set", f"train.eval_interval={steps}", "--set", "train.checkpoint_interval=0"]
    engine("train", SHIPPED, *common, "--set", "run.name=gpt2-tiny")
    engine("train", os.path.join(ROOT, "configs", "llama-tiny.toml"), *common, "--set", "run.name=llama-tiny")
    gpt2 = engine_json("eval", os.path.join(work, "gpt2-tiny"), "--device", "cpu", "--json")["val_loss"]
    llama = engine_json("eval", os.path.join(work, "llama-tiny"), "--device", "cpu", "--json")["val_loss"]
    check("llama vs gpt2 validation loss", llama <= gpt2 * 1.02, f"llama {llama:.4f}, gpt2 {gpt2:.4f} after {steps} steps each (ratio {llama / gpt2:.4f}, limit 1.02)")
    ckpt = os.path.join(work, "llama-tiny", "checkpoints", open(os.path.join(work, "llama-tiny", "checkpoints", "latest")).read().strip())
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    check("llama checkpoint loads in transformers", type(model).__name__ == "LlamaForCausalLM", f"{type(model).__name__} from {ckpt}")
    compare("trained llama checkpoint", ckpt, model, work, batches=4, sample_tokens=64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", help="only compare this checkpoint (or run directory) with transformers")
    ap.add_argument("--steps", type=int, default=800, help="training steps of the llama-vs-gpt2 comparison (the configs' max_steps)")
    ap.add_argument("--finetune-steps", type=int, default=30)
    ap.add_argument("--out", help="keep the work directory here (default: a temporary one)")
    args = ap.parse_args()
    if not os.path.exists(ENGINE):
        raise SystemExit(f"{ENGINE} is missing: cargo build --release -p engine")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = args.out or tempfile.mkdtemp(prefix="hf-check-")
    os.makedirs(work, exist_ok=True)
    if args.checkpoint:
        ckpt = args.checkpoint
        latest = os.path.join(ckpt, "checkpoints", "latest")
        if os.path.exists(latest):
            ckpt = os.path.join(ckpt, "checkpoints", open(latest).read().strip())
        model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
        compare(f"checkpoint {ckpt} ({type(model).__name__})", ckpt, model, work, batches=4)
        sys.exit(1 if failures else 0)
    (gpt2_dir, gpt2), (llama_dir, llama) = random_models(work)
    gpt2_loss = compare("hf gpt2", gpt2_dir, gpt2, work)
    llama_loss = compare("hf llama", llama_dir, llama, work)
    fine_tune("gpt2", gpt2_dir, work, gpt2_loss, args.finetune_steps)
    fine_tune("llama", llama_dir, work, llama_loss, args.finetune_steps)
    llama_vs_gpt2(work, args.steps)
    print(f"{'all checks passed' if not failures else f'{len(failures)} failed: ' + ', '.join(failures)} (work directory {work})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

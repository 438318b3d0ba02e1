#!/usr/bin/env python3
"""Generate the tiny GPT-2 reference fixture used by the Rust engine's tests.

The fixture is produced by Hugging Face `transformers.GPT2LMHeadModel` running
in float64 so that it is an *independent* implementation of GPT-2 (nothing here
shares code with the engine), and so that the stored float32 numbers are as
close to the mathematically exact values as float32 can represent.

Output: fixtures/gpt2_tiny_reference.safetensors containing

  param.<name>        float32  initial weights (HF names, no `transformer.`)
  tokens              int32    [STEPS, B, T+1]; step s uses x=[s,:,:T], y=[s,:,1:]
  loss0               float32  [1] mean cross-entropy on step 0's batch
  grad.<name>         float32  d loss0 / d param
  adamw_losses        float32  [STEPS] loss before each AdamW update
  adamw_final.<name>  float32  parameters after STEPS AdamW updates

Run:  /work/refenv/bin/python scripts/make_reference_fixture.py
"""

import json
import os
import struct
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save
from transformers import GPT2Config, GPT2LMHeadModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_PATH = os.path.join(REPO_ROOT, "fixtures", "gpt2_tiny_reference.safetensors")

SEED = 1234

# vocab_size=100 is deliberately not a multiple of 128 (exercises any vocab
# padding in the engine), and T < n_positions exercises slicing of wpe.
VOCAB = 100
N_POSITIONS = 32
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
LN_EPS = 1e-5
B = 4
T = 16
STEPS = 5

LR = 1e-2
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0


def hf_name(full_name: str) -> str:
    # The engine uses the names of the standalone GPT2Model checkpoint (the
    # layout of the original OpenAI/HF `gpt2` files), so drop the LM wrapper's
    # prefix.
    prefix = "transformer."
    assert full_name.startswith(prefix), full_name
    return full_name[len(prefix):]


def is_decayed(name: str) -> bool:
    # Only the matmul weights of attention/MLP are decayed; embeddings,
    # biases and LayerNorm parameters are not (nanoGPT/GPT-2 convention).
    return name.endswith(".weight") and any(
        k in name for k in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )


def draw_initial_weights(named_params):
    """Draw all weights in float32 so the stored fixture values are exact."""
    init = {}
    for full_name, p in named_params:
        name = hf_name(full_name)
        shape = tuple(p.shape)
        if ".ln_" in name or name.startswith("ln_f."):
            # Non-trivial LayerNorm affine params so that a bug that ignores
            # gamma/beta (or swaps them) cannot go unnoticed.
            if name.endswith(".weight"):
                w = 1.0 + 0.1 * torch.randn(shape, dtype=torch.float32)
            else:
                w = 0.05 * torch.randn(shape, dtype=torch.float32)
        else:
            # Matmul weights, embeddings and biases: N(0, 0.02). Biases are
            # non-zero on purpose (GPT-2's usual zero init would hide bugs).
            w = 0.02 * torch.randn(shape, dtype=torch.float32)
        init[name] = w.contiguous()
    return init


def deterministic_safetensors(tensors, metadata) -> bytes:
    """Serialize with safetensors, then rewrite the JSON header with sorted keys.

    The safetensors writer emits the metadata map in hash order, so two runs
    give byte-different files even though every tensor is identical. The
    fixture is committed, so we want regeneration to be a no-op in git. Data
    offsets are relative to the end of the header, so the tensor bytes can be
    reused unchanged.
    """
    raw = save(tensors, metadata=metadata)
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = raw[8 + header_len :]
    new_header = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    # The format pads the header with spaces so tensor data stays 8-byte aligned.
    new_header += b" " * (-len(new_header) % 8)
    return struct.pack("<Q", len(new_header)) + new_header + data


def batch_loss(model, tokens_step):
    # Compute the loss explicitly instead of via `labels=`, because HF shifts
    # labels internally; here x/y are already shifted by construction.
    x = tokens_step[:, :-1].long()
    y = tokens_step[:, 1:].long()
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def main():
    torch.set_num_threads(2)
    torch.manual_seed(SEED)

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_POSITIONS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        activation_function="gelu_new",
        layer_norm_epsilon=LN_EPS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        # GPT-2's default bos/eos id 50256 is outside this tiny vocab; they are
        # unused here, so drop them to avoid a config validation warning.
        bos_token_id=None,
        eos_token_id=None,
        # Eager attention is the plain softmax(QK^T/sqrt(d)) path, i.e. the
        # textbook reference rather than a fused SDPA kernel (the default).
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config).to(torch.float64)
    assert model.config._attn_implementation == "eager"
    model.train()  # dropout is 0 anyway; train() is what the training steps use

    # named_parameters() de-duplicates the tied lm_head.weight, so wte appears
    # once and its .grad accumulates both uses.
    named_params = list(model.named_parameters())
    assert all(n.startswith("transformer.") for n, _ in named_params), [
        n for n, _ in named_params
    ]
    assert model.lm_head.weight is model.transformer.wte.weight, "lm_head not tied"

    init = draw_initial_weights(named_params)
    with torch.no_grad():
        for full_name, p in named_params:
            p.copy_(init[hf_name(full_name)].to(torch.float64))

    tokens = torch.randint(0, VOCAB, (STEPS, B, T + 1), dtype=torch.int32)

    tensors = {}
    for name, w in init.items():
        tensors[f"param.{name}"] = w
    tensors["tokens"] = tokens.contiguous()

    # --- loss and gradients of the initial model on step 0 -----------------
    model.zero_grad(set_to_none=True)
    loss0 = batch_loss(model, tokens[0])
    loss0.backward()
    tensors["loss0"] = torch.tensor([loss0.item()], dtype=torch.float32)
    for full_name, p in named_params:
        tensors[f"grad.{hf_name(full_name)}"] = p.grad.to(torch.float32).contiguous()

    # --- STEPS AdamW updates starting from the same initial weights --------
    model.zero_grad(set_to_none=True)
    params = [p for _, p in named_params]
    decay = [p for n, p in named_params if is_decayed(hf_name(n))]
    no_decay = [p for n, p in named_params if not is_decayed(hf_name(n))]
    assert len(decay) == 4 * N_LAYER, [hf_name(n) for n, _ in named_params if is_decayed(hf_name(n))]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LR,
        betas=BETAS,
        eps=ADAM_EPS,
    )
    losses = []
    for s in range(STEPS):
        loss = batch_loss(model, tokens[s])
        losses.append(loss.item())  # recorded before this step's update
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    # Step 0 of the AdamW run must see the same loss as the gradient check.
    assert losses[0] == loss0.item(), (losses[0], loss0.item())

    tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    for full_name, p in named_params:
        tensors[f"adamw_final.{hf_name(full_name)}"] = (
            p.detach().to(torch.float32).contiguous()
        )

    metadata = {
        "n_layer": str(N_LAYER),
        "n_head": str(N_HEAD),
        "n_embd": str(N_EMBD),
        "vocab_size": str(VOCAB),
        "n_positions": str(N_POSITIONS),
        "B": str(B),
        "T": str(T),
        "steps": str(STEPS),
        "lr": repr(LR),
        "beta1": repr(BETAS[0]),
        "beta2": repr(BETAS[1]),
        "eps": repr(ADAM_EPS),
        "weight_decay": repr(WEIGHT_DECAY),
        "max_grad_norm": repr(MAX_GRAD_NORM),
        "layer_norm_epsilon": repr(LN_EPS),
        "activation_function": "gelu_new",
        "seed": str(SEED),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "note": "generated by scripts/make_reference_fixture.py "
        "(transformers GPT2LMHeadModel, float64)",
    }

    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "wb") as f:
        f.write(deterministic_safetensors(tensors, metadata))

    size = os.path.getsize(OUT_PATH)
    print(f"wrote {os.path.relpath(OUT_PATH, REPO_ROOT)} ({size} bytes, {size / 1024:.1f} KiB)")
    print(f"tensors: {len(tensors)}  parameters: {sum(w.numel() for w in init.values())}")
    print(f"loss0 = {loss0.item():.9f}")
    print("adamw_losses = [" + ", ".join(f"{l:.9f}" for l in losses) + "]")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

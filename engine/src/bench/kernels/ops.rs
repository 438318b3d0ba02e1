//! Each op's buffer sets, passes and work, with the dtypes the model gives it (see
//! models/src/param.rs): `a` below is the activation dtype's size (bf16 on a GPU, f32 on
//! the CPU), weights are read in it too; mean/rstd, the attention state, losses, parameter
//! gradients and AdamW's state are f32. Bytes count what a pass must read and write at
//! least: a gathered or scattered row once, an accumulated gradient read and written.

use kernels::ops::adamw::{adamw_update, adamw_update_with_copy, AdamWStep};
use kernels::ops::attention::{attention_backward, attention_forward, attention_saved};
use kernels::ops::crossentropy::crossentropy_forward;
use kernels::ops::embedding::{embedding_backward, embedding_forward};
use kernels::ops::gelu::{gelu_backward, gelu_forward};
use kernels::ops::layernorm::{layernorm_backward, layernorm_forward};
use kernels::ops::matmul::{matmul_backward, matmul_forward, WeightLayout};
use kernels::ops::residual::{accumulate, residual_forward};
use kernels::{DType, Device, Tensor};

use super::{gemms, Bench, Gemm, Work};
use crate::Result;

/// Every op, in the order the suite runs them.
pub const OPS: [&str; 10] =
    ["matmul_qkv", "matmul_fc", "matmul_lm_head", "attention", "layernorm", "gelu", "residual", "embedding", "crossentropy", "adamw"];

/// A pass over one buffer set.
type Pass<'p, S> = (&'static str, Work, Box<dyn FnMut(&mut S) -> Result<()> + 'p>);

pub fn run_all(bench: &mut Bench) -> Result<()> {
    for g in gemms(&bench.shapes) {
        matmul(bench, g)?;
    }
    attention(bench)?;
    layernorm(bench)?;
    gelu(bench)?;
    residual(bench)?;
    embedding(bench)?;
    crossentropy(bench)?;
    adamw(bench)
}

/// Makes the buffer sets of `op` (a pass touches `set_bytes` of one), times each pass over them and records
/// `<op>_<pass>` entries; then gives the memory back.
fn measure<S>(
    bench: &mut Bench,
    op: &str,
    set_bytes: f64,
    extra: serde_json::Value,
    mut make: impl FnMut(&mut Bench) -> Result<S>,
    passes: Vec<Pass<'_, S>>,
) -> Result<()> {
    let count = bench.sets(set_bytes);
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        sets.push(make(bench)?);
    }
    let hash = bench.workload(op, count, extra);
    for (pass, work, mut f) in passes {
        let times = bench.time(count, |i| f(&mut sets[i]))?;
        bench.record(&format!("{op}_{pass}"), &hash, &times, work)?;
    }
    drop(sets);
    kernels::memory::empty_cache(bench.device);
    Ok(())
}

struct MatmulSet {
    inp: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    out: Tensor,
    dout: Tensor,
    dinp: Tensor,
    dweight: Tensor,
    dbias: Option<Tensor>,
}

/// forward: out = inp @ W + bias (one GEMM); backward: dinp = dout @ W^T and dW += inp^T @ dout
/// (two GEMMs), dbias += column sums of dout (not counted).
fn matmul(bench: &mut Bench, g: Gemm) -> Result<()> {
    let (dt, a) = (bench.shapes.dtype, bench.shapes.dtype.size_in_bytes() as f64);
    let (n, ic, oc) = (g.rows, g.ic, g.oc);
    let w_shape = match g.layout {
        WeightLayout::InOut => [ic, oc],
        WeightLayout::OutIn => [oc, ic],
    };
    let set_bytes = a * (2 * n * ic + ic * oc + 2 * n * oc + oc) as f64 + 4.0 * (ic * oc + oc) as f64;
    let make = |b: &mut Bench| {
        Ok(MatmulSet {
            inp: b.random(dt, &[n, ic], -1.0, 1.0)?,
            weight: b.random(dt, &w_shape, -0.1, 0.1)?,
            bias: if g.bias { Some(b.random(dt, &[oc], -0.1, 0.1)?) } else { None },
            out: b.zeros(dt, &[n, oc])?,
            dout: b.random(dt, &[n, oc], -1.0, 1.0)?,
            dinp: b.zeros(dt, &[n, ic])?,
            dweight: b.zeros(DType::F32, &w_shape)?,
            dbias: if g.bias { Some(b.zeros(DType::F32, &[oc])?) } else { None },
        })
    };
    let layout = g.layout;
    let forward = move |s: &mut MatmulSet| Ok(matmul_forward(&mut s.out, &s.inp, &s.weight, s.bias.as_ref(), layout)?);
    let backward = move |s: &mut MatmulSet| {
        Ok(matmul_backward(&mut s.dinp, &mut s.dweight, s.dbias.as_mut(), &s.dout, &s.inp, &s.weight, layout)?)
    };
    let extra = serde_json::json!({"M": n, "K": ic, "N": oc, "layout": format!("{layout:?}"), "bias": g.bias});
    let passes: Vec<Pass<MatmulSet>> = vec![
        ("forward", Work::Flops(g.flops()), Box::new(forward)),
        ("backward", Work::Flops(2.0 * g.flops()), Box::new(backward)),
    ];
    measure(bench, &format!("matmul_{}", g.name), set_bytes, extra, make, passes)
}

/// Attention FLOPs of a forward: 4*B*NH*T*T*HS (QK^T and PV), halved for the causal mask.
pub fn attention_forward_flops(b: usize, t: usize, c: usize) -> f64 {
    // 4 * B * NH * T * T * HS = 4 * B * T * T * C
    4.0 * b as f64 * (t * t) as f64 * c as f64 / 2.0
}

struct AttentionSet {
    qkv: Tensor,
    out: Tensor,
    saved: Tensor,
    dout: Tensor,
    dqkv: Tensor,
}

fn attention(bench: &mut Bench) -> Result<()> {
    let s = bench.shapes;
    let (dt, a, nh) = (s.dtype, s.dtype.size_in_bytes() as f64, s.nh);
    let (b, t, c) = (s.b, s.t, s.c);
    let saved_floats: usize = kernels::ops::attention::attention_saved_shape(bench.device, b, t, c, nh).iter().product();
    let set_bytes = a * (b * t * (3 * c + c + c + 3 * c)) as f64 + 4.0 * saved_floats as f64;
    let make = |bench: &mut Bench| {
        let qkv = bench.random(dt, &[b, t, 3 * c], -1.0, 1.0)?;
        let mut set = AttentionSet {
            out: bench.zeros(dt, &[b, t, c])?,
            saved: attention_saved(&qkv, nh)?,
            dout: bench.random(dt, &[b, t, c], -1.0, 1.0)?,
            dqkv: bench.zeros(dt, &[b, t, 3 * c])?,
            qkv,
        };
        // the backward reads the state this forward saves
        attention_forward(&mut set.out, &mut set.saved, &set.qkv, nh)?;
        Ok(set)
    };
    let flops = attention_forward_flops(b, t, c);
    let passes: Vec<Pass<AttentionSet>> = vec![
        ("forward", Work::Flops(flops), Box::new(move |s| Ok(attention_forward(&mut s.out, &mut s.saved, &s.qkv, nh)?))),
        ("backward", Work::Flops(2.0 * flops), Box::new(move |s| Ok(attention_backward(&mut s.dqkv, &s.dout, &s.qkv, &s.out, &s.saved, nh)?))),
    ];
    let extra = serde_json::json!({"attention_flops": "causal: 4*B*NH*T*T*HS/2 forward, 2x backward"});
    measure(bench, "attention", set_bytes, extra, make, passes)
}

struct LayernormSet {
    inp: Tensor,
    weight: Tensor,
    bias: Tensor,
    out: Tensor,
    mean: Tensor,
    rstd: Tensor,
    dout: Tensor,
    dinp: Tensor,
    dweight: Tensor,
    dbias: Tensor,
}

/// forward reads inp, weight, bias, writes out, mean, rstd; backward reads dout, inp, weight,
/// mean, rstd, writes dinp, accumulates dweight and dbias (f32).
fn layernorm(bench: &mut Bench) -> Result<()> {
    let s = bench.shapes;
    let (dt, a, n, c) = (s.dtype, s.dtype.size_in_bytes() as f64, s.n() as f64, s.c as f64);
    let fwd_bytes = 2.0 * n * c * a + 2.0 * c * a + 2.0 * n * 4.0;
    let bwd_bytes = 3.0 * n * c * a + c * a + 2.0 * n * 4.0 + 2.0 * 2.0 * c * 4.0;
    let set_bytes = 4.0 * n * c * a + 2.0 * c * a + 2.0 * n * 4.0 + 2.0 * c * 4.0;
    let (rows, ch) = (s.n(), s.c);
    let make = |b: &mut Bench| {
        let mut set = LayernormSet {
            inp: b.random(dt, &[rows, ch], -1.0, 1.0)?,
            weight: b.random(dt, &[ch], 0.5, 1.5)?,
            bias: b.random(dt, &[ch], -0.1, 0.1)?,
            out: b.zeros(dt, &[rows, ch])?,
            mean: b.zeros(DType::F32, &[rows])?,
            rstd: b.zeros(DType::F32, &[rows])?,
            dout: b.random(dt, &[rows, ch], -1.0, 1.0)?,
            dinp: b.zeros(dt, &[rows, ch])?,
            dweight: b.zeros(DType::F32, &[ch])?,
            dbias: b.zeros(DType::F32, &[ch])?,
        };
        // the backward reads the mean and rstd this forward saves
        layernorm_forward(&mut set.out, &mut set.mean, &mut set.rstd, &set.inp, &set.weight, &set.bias)?;
        Ok(set)
    };
    let passes: Vec<Pass<LayernormSet>> = vec![
        (
            "forward",
            Work::Bytes(fwd_bytes),
            Box::new(|s| Ok(layernorm_forward(&mut s.out, &mut s.mean, &mut s.rstd, &s.inp, &s.weight, &s.bias)?)),
        ),
        (
            "backward",
            Work::Bytes(bwd_bytes),
            Box::new(|s| Ok(layernorm_backward(&mut s.dinp, &mut s.dweight, &mut s.dbias, &s.dout, &s.inp, &s.weight, &s.mean, &s.rstd)?)),
        ),
    ];
    measure(bench, "layernorm", set_bytes, serde_json::json!({}), make, passes)
}

/// On the MLP's hidden activations (B,T,4C): forward reads inp, writes out; backward reads
/// inp and dout, writes dinp.
fn gelu(bench: &mut Bench) -> Result<()> {
    let s = bench.shapes;
    let (dt, a) = (s.dtype, s.dtype.size_in_bytes() as f64);
    let shape = [s.n(), 4 * s.c];
    let elems = (s.n() * 4 * s.c) as f64;
    let make = |b: &mut Bench| Ok([b.random(dt, &shape, -3.0, 3.0)?, b.zeros(dt, &shape)?, b.random(dt, &shape, -1.0, 1.0)?, b.zeros(dt, &shape)?]);
    let passes: Vec<Pass<[Tensor; 4]>> = vec![
        ("forward", Work::Bytes(2.0 * elems * a), Box::new(|[inp, out, _, _]| Ok(gelu_forward(out, inp)?))),
        ("backward", Work::Bytes(3.0 * elems * a), Box::new(|[inp, _, dout, dinp]| Ok(gelu_backward(dinp, inp, dout)?))),
    ];
    measure(bench, "gelu", 4.0 * elems * a, serde_json::json!({"shape": shape}), make, passes)
}

/// forward: out = a + b; backward, where the two branches' gradients meet, dx += dout
/// (`accumulate`, as the block does it). Each reads two (B,T,C) tensors and writes one.
fn residual(bench: &mut Bench) -> Result<()> {
    let s = bench.shapes;
    let (dt, a) = (s.dtype, s.dtype.size_in_bytes() as f64);
    let shape = [s.n(), s.c];
    let elems = (s.n() * s.c) as f64;
    let make = |b: &mut Bench| {
        Ok([b.random(dt, &shape, -1.0, 1.0)?, b.random(dt, &shape, -1.0, 1.0)?, b.zeros(dt, &shape)?, b.random(dt, &shape, -1.0, 1.0)?, b.random(dt, &shape, -1.0, 1.0)?])
    };
    let passes: Vec<Pass<[Tensor; 5]>> = vec![
        ("forward", Work::Bytes(3.0 * elems * a), Box::new(|[x, y, out, _, _]| Ok(residual_forward(out, x, y)?))),
        ("backward", Work::Bytes(3.0 * elems * a), Box::new(|[_, _, _, dx, dout]| Ok(accumulate(dx, dout)?))),
    ];
    measure(bench, "residual", 5.0 * elems * a, serde_json::json!({}), make, passes)
}

/// wte and dwte (Vp rows) are shared by the sets: each set's own token ids pick other rows.
struct EmbeddingSet {
    tokens: Tensor,
    wpe: Tensor,
    out: Tensor,
    dout: Tensor,
    dwpe: Tensor,
}

/// forward: out = wte[tokens] + wpe (reads the tokens, B*T rows of wte, T rows of wpe, writes
/// out); backward: dwte[tokens] += dout, dwpe += sum_b dout, all f32 as the model calls it
/// (the bf16 gradient is cast first): reads dout and the tokens, reads and writes B*T rows of
/// dwte and T rows of dwpe.
fn embedding(bench: &mut Bench) -> Result<()> {
    let s = bench.shapes;
    let (dt, a) = (s.dtype, s.dtype.size_in_bytes() as f64);
    let (b, t, c, n) = (s.b, s.t, s.c, s.n());
    let (nf, tf, cf) = (n as f64, t as f64, c as f64);
    let fwd_bytes = 4.0 * nf + nf * cf * a + tf * cf * a + nf * cf * a;
    let bwd_bytes = 4.0 * nf + nf * cf * 4.0 + 2.0 * nf * cf * 4.0 + 2.0 * tf * cf * 4.0;
    let set_bytes = 4.0 * nf + nf * cf * (2.0 * a + 3.0 * 4.0) + tf * cf * (a + 2.0 * 4.0);
    let wte = bench.random(dt, &[s.vp, c], -0.1, 0.1)?;
    let mut dwte = bench.zeros(DType::F32, &[s.vp, c])?;
    let make = |bench: &mut Bench| {
        Ok(EmbeddingSet {
            tokens: bench.tokens(&[b, t], s.v)?,
            wpe: bench.random(dt, &[s.max_t, c], -0.1, 0.1)?,
            out: bench.zeros(dt, &[b, t, c])?,
            dout: bench.random(DType::F32, &[b, t, c], -1.0, 1.0)?,
            dwpe: bench.zeros(DType::F32, &[s.max_t, c])?,
        })
    };
    let wte = &wte;
    let dwte = &mut dwte;
    let passes: Vec<Pass<EmbeddingSet>> = vec![
        ("forward", Work::Bytes(fwd_bytes), Box::new(move |s| Ok(embedding_forward(&mut s.out, &s.tokens, wte, Some(&s.wpe))?))),
        ("backward", Work::Bytes(bwd_bytes), Box::new(move |s| Ok(embedding_backward(dwte, Some(&mut s.dwpe), &s.dout, &s.tokens)?))),
    ];
    measure(bench, "embedding", set_bytes, serde_json::json!({"dout_dtype": "f32"}), make, passes)
}

/// The fused classifier tail as the model runs it, on logits (B*T, Vp): forward = the losses
/// only (reads the V real columns and the targets, writes the losses); backward = the model's
/// fused pass, losses and dlogits written over the logits in place (also writes all Vp
/// columns). A set's logits hold dlogits after its first backward: the values change, the
/// work does not.
fn crossentropy(bench: &mut Bench) -> Result<()> {
    let s = bench.shapes;
    let (dt, a) = (s.dtype, s.dtype.size_in_bytes() as f64);
    let (n, v, vp) = (s.n(), s.v, s.vp);
    let (nf, vf, vpf) = (n as f64, v as f64, vp as f64);
    let make = |b: &mut Bench| Ok([b.random(dt, &[n, vp], -4.0, 4.0)?, b.tokens(&[n], v)?, b.zeros(DType::F32, &[n])?]);
    let dloss = 1.0 / n as f32;
    let passes: Vec<Pass<[Tensor; 3]>> = vec![
        (
            "forward",
            Work::Bytes(nf * vf * a + 8.0 * nf),
            Box::new(move |[logits, targets, losses]| Ok(crossentropy_forward(losses, logits, targets, v, None)?)),
        ),
        (
            "backward",
            Work::Bytes(nf * vf * a + nf * vpf * a + 8.0 * nf),
            Box::new(move |[logits, targets, losses]| Ok(crossentropy_forward(losses, logits, targets, v, Some(dloss))?)),
        ),
    ];
    measure(bench, "crossentropy", nf * vpf * a + 8.0 * nf, serde_json::json!({}), make, passes)
}

/// One AdamW step over every parameter of GPT-2 124M (f32 master weights, gradients, m, v):
/// reads 4 and writes 3 f32 per parameter; on a GPU it also writes the bf16 working copy, as
/// the optimizer does in bf16 precision (`adamw_update_with_copy`). The pass is `update`.
fn adamw(bench: &mut Bench) -> Result<()> {
    let p = bench.shapes.gpt2_params();
    let gpu = matches!(bench.device, Device::Cuda(_));
    let per_param = 7.0 * 4.0 + if gpu { 2.0 } else { 0.0 };
    let hp = AdamWStep { lr: 6e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 1 };
    let make = |b: &mut Bench| {
        let copy = if gpu { Some(b.zeros(DType::Bf16, &[p])?) } else { None };
        Ok((b.random(DType::F32, &[p], -0.1, 0.1)?, b.random(DType::F32, &[p], -0.01, 0.01)?, b.random(DType::F32, &[p], -0.01, 0.01)?, b.random(DType::F32, &[p], 0.0, 1e-4)?, copy))
    };
    let update = move |(param, grad, m, v, copy): &mut (Tensor, Tensor, Tensor, Tensor, Option<Tensor>)| {
        match copy {
            Some(copy) => adamw_update_with_copy(param, copy, grad, m, v, &hp)?,
            None => adamw_update(param, grad, m, v, &hp)?,
        }
        Ok(())
    };
    let passes: Vec<Pass<_>> = vec![("update", Work::Bytes(per_param * p as f64), Box::new(update))];
    let extra = serde_json::json!({"params": p, "working_copy": gpu});
    measure(bench, "adamw", per_param * p as f64, extra, make, passes)
}

//! Token + position embedding.
//!
//! forward:  out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]          out (B,T,C)
//! backward: dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:]
//! (parameter gradients accumulate; token ids have no gradient).

use super::{expect_dtype, same_device};
use crate::{DType, Device, Error, Result, Tensor};

const OP_FWD: &str = "embedding_forward";
const OP_BWD: &str = "embedding_backward";

/// tokens (B,T) u32, wte (V,C), wpe (maxT,C) -> out (B,T,C). Errors on a token id >= V.
pub fn embedding_forward(out: &mut Tensor, tokens: &Tensor, wte: &Tensor, wpe: &Tensor) -> Result<()> {
    let (b, t, c) = check(OP_FWD, tokens, wte, wpe)?;
    out.expect_shape(OP_FWD, "out", &[b, t, c])?;
    match same_device(OP_FWD, &[out, tokens, wte, wpe])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: OP_FWD, device }),
        Device::Cpu => cpu::embedding_forward(out.f32_mut()?, tokens.u32()?, wte.f32()?, wpe.f32()?, t, c),
    }
}

/// dout (B,T,C) -> dwte (V,C) +=, dwpe (maxT,C) +=.
pub fn embedding_backward(dwte: &mut Tensor, dwpe: &mut Tensor, dout: &Tensor, tokens: &Tensor) -> Result<()> {
    let (b, t, c) = check(OP_BWD, tokens, dwte, dwpe)?;
    dout.expect_shape(OP_BWD, "dout", &[b, t, c])?;
    match same_device(OP_BWD, &[dwte, dwpe, dout, tokens])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: OP_BWD, device }),
        Device::Cpu => {
            cpu::embedding_backward(dwte.f32_mut()?, dwpe.f32_mut()?, dout.f32()?, tokens.u32()?, t, c)
        }
    }
}

fn check(op: &'static str, tokens: &Tensor, wte: &Tensor, wpe: &Tensor) -> Result<(usize, usize, usize)> {
    expect_dtype(op, "tokens", tokens, DType::U32)?;
    let &[b, t] = tokens.shape() else {
        return Err(Error::Invalid { op, msg: format!("tokens must be (B,T), got {:?}", tokens.shape()) });
    };
    let &[_, c] = wte.shape() else {
        return Err(Error::Invalid { op, msg: format!("wte must be (V,C), got {:?}", wte.shape()) });
    };
    let &[max_t, c2] = wpe.shape() else {
        return Err(Error::Invalid { op, msg: format!("wpe must be (maxT,C), got {:?}", wpe.shape()) });
    };
    if c2 != c || t > max_t {
        return Err(Error::Shape { op, arg: "wpe", expected: vec![t.max(max_t), c], got: vec![max_t, c2] });
    }
    Ok((b, t, c))
}

pub mod cpu {
    use rayon::prelude::*;

    use crate::{Error, Result};

    pub fn embedding_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, c: usize) -> Result<()> {
        let v = wte.len() / c;
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= v) {
            return Err(Error::Invalid {
                op: "embedding_forward",
                msg: format!("token id {bad} is outside the vocabulary (size {v})"),
            });
        }
        out.par_chunks_mut(c).zip(tokens.par_iter()).enumerate().for_each(|(row, (o, &id))| {
            let te = &wte[id as usize * c..][..c];
            let pe = &wpe[(row % t) * c..][..c];
            for i in 0..c {
                o[i] = te[i] + pe[i];
            }
        });
        Ok(())
    }

    pub fn embedding_backward(
        dwte: &mut [f32],
        dwpe: &mut [f32],
        dout: &[f32],
        tokens: &[u32],
        t: usize,
        c: usize,
    ) -> Result<()> {
        // Sequential over rows: the scatter into dwte has collisions (repeated tokens), and a
        // fixed order keeps the sum deterministic. It is O(B*T*C), negligible next to matmuls.
        for (row, (d, &id)) in dout.chunks(c).zip(tokens).enumerate() {
            let te = &mut dwte[id as usize * c..][..c];
            for i in 0..c {
                te[i] += d[i];
            }
            let pe = &mut dwpe[(row % t) * c..][..c];
            for i in 0..c {
                pe[i] += d[i];
            }
        }
        Ok(())
    }
}

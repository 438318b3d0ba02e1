//! Matmul with optional bias, over the last dimension of `inp`.
//!
//! forward:  out (N,OC) = inp (N,IC) @ W + bias
//! backward: dinp (N,IC) = dout @ W^T          (overwrites)
//!           dW += inp^T @ dout (in W's layout), dbias += sum_rows dout   (accumulate)
//!
//! W is stored either [IC, OC] (`WeightLayout::InOut`: Hugging Face GPT-2's Conv1D) or
//! [OC, IC] (`WeightLayout::OutIn`: the tied embedding used as the classifier). The CPU path
//! reads either through strides, never transposing a copy.

use super::{rows_cols, same_device};
use crate::{Device, Error, Result, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// weight is [IC, OC]: out = inp @ weight.
    InOut,
    /// weight is [OC, IC]: out = inp @ weight^T.
    OutIn,
}

const OP_FWD: &str = "matmul_forward";
const OP_BWD: &str = "matmul_backward";

fn dims(op: &'static str, inp: &Tensor, weight: &Tensor, layout: WeightLayout) -> Result<(usize, usize, usize)> {
    let (n, ic) = rows_cols(inp);
    let &[a, b] = weight.shape() else {
        return Err(Error::Invalid { op, msg: format!("weight must be 2-D, got {:?}", weight.shape()) });
    };
    let (w_ic, oc) = match layout {
        WeightLayout::InOut => (a, b),
        WeightLayout::OutIn => (b, a),
    };
    if w_ic != ic {
        return Err(Error::Invalid {
            op,
            msg: format!("inp has {ic} channels but weight {:?} ({layout:?}) expects {w_ic}", weight.shape()),
        });
    }
    Ok((n, ic, oc))
}

fn out_shape(inp: &Tensor, oc: usize) -> Vec<usize> {
    let mut s = inp.shape().to_vec();
    *s.last_mut().expect("inp has at least one dimension") = oc;
    s
}

pub fn matmul_forward(
    out: &mut Tensor,
    inp: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    layout: WeightLayout,
) -> Result<()> {
    let (n, ic, oc) = dims(OP_FWD, inp, weight, layout)?;
    out.expect_shape(OP_FWD, "out", &out_shape(inp, oc))?;
    if let Some(b) = bias {
        b.expect_shape(OP_FWD, "bias", &[oc])?;
        same_device(OP_FWD, &[out, b])?;
    }
    match same_device(OP_FWD, &[out, inp, weight])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: OP_FWD, device }),
        Device::Cpu => {
            let bias = bias.map(|b| b.f32()).transpose()?;
            cpu::matmul_forward(out.f32_mut()?, inp.f32()?, weight.f32()?, bias, n, ic, oc, layout);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut Tensor,
    dweight: &mut Tensor,
    dbias: Option<&mut Tensor>,
    dout: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    layout: WeightLayout,
) -> Result<()> {
    let (n, ic, oc) = dims(OP_BWD, inp, weight, layout)?;
    dinp.expect_shape(OP_BWD, "dinp", inp.shape())?;
    dweight.expect_shape(OP_BWD, "dweight", weight.shape())?;
    dout.expect_shape(OP_BWD, "dout", &out_shape(inp, oc))?;
    match same_device(OP_BWD, &[dinp, dweight, dout, inp, weight])? {
        device @ Device::Cuda(_) => return Err(Error::NoKernel { op: OP_BWD, device }),
        Device::Cpu => {
            let dbias = match dbias {
                Some(b) => {
                    b.expect_shape(OP_BWD, "dbias", &[oc])?;
                    Some(b.f32_mut()?)
                }
                None => None,
            };
            cpu::matmul_backward(dinp.f32_mut()?, dweight.f32_mut()?, dbias, dout.f32()?, inp.f32()?, weight.f32()?, n, ic, oc, layout);
        }
    }
    Ok(())
}

pub mod cpu {
    use rayon::prelude::*;

    use super::WeightLayout;
    use crate::ops::cpu_util::{reduce_rows_into, sgemm, Mat};

    /// W as the (IC x OC) matrix of the product, whatever its storage layout.
    fn w_as_in_out(weight: &[f32], ic: usize, oc: usize, layout: WeightLayout) -> Mat<*const f32> {
        match layout {
            WeightLayout::InOut => Mat::rows(weight.as_ptr(), oc),
            WeightLayout::OutIn => Mat::trans(weight.as_ptr(), ic),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward(
        out: &mut [f32],
        inp: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        ic: usize,
        oc: usize,
        layout: WeightLayout,
    ) {
        if let Some(bias) = bias {
            out.par_chunks_mut(oc).for_each(|row| row.copy_from_slice(bias));
        }
        // SAFETY: out is (n x oc), inp (n x ic), weight ic*oc elements; strides stay inside them.
        unsafe {
            sgemm(
                n,
                oc,
                ic,
                Mat { ptr: out.as_mut_ptr(), rs: oc as isize, cs: 1 },
                bias.is_some(),
                Mat::rows(inp.as_ptr(), ic),
                w_as_in_out(weight, ic, oc, layout),
                1.0,
                true,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward(
        dinp: &mut [f32],
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        weight: &[f32],
        n: usize,
        ic: usize,
        oc: usize,
        layout: WeightLayout,
    ) {
        let w = w_as_in_out(weight, ic, oc, layout);
        // SAFETY: all matrices are within their slices: dinp (n x ic), dout (n x oc),
        // inp (n x ic), weight/dweight ic*oc elements, addressed with matching strides.
        unsafe {
            // dinp (n x ic) = dout (n x oc) @ W^T (oc x ic)
            sgemm(
                n,
                ic,
                oc,
                Mat { ptr: dinp.as_mut_ptr(), rs: ic as isize, cs: 1 },
                false,
                Mat::rows(dout.as_ptr(), oc),
                Mat { ptr: w.ptr, rs: w.cs, cs: w.rs },
                1.0,
                true,
            );
            match layout {
                // dW (ic x oc) += inp^T (ic x n) @ dout (n x oc)
                WeightLayout::InOut => sgemm(
                    ic,
                    oc,
                    n,
                    Mat { ptr: dweight.as_mut_ptr(), rs: oc as isize, cs: 1 },
                    true,
                    Mat::trans(inp.as_ptr(), ic),
                    Mat::rows(dout.as_ptr(), oc),
                    1.0,
                    true,
                ),
                // dW (oc x ic) += dout^T (oc x n) @ inp (n x ic)
                WeightLayout::OutIn => sgemm(
                    oc,
                    ic,
                    n,
                    Mat { ptr: dweight.as_mut_ptr(), rs: ic as isize, cs: 1 },
                    true,
                    Mat::trans(dout.as_ptr(), oc),
                    Mat::rows(inp.as_ptr(), ic),
                    1.0,
                    true,
                ),
            }
        }
        if let Some(dbias) = dbias {
            reduce_rows_into(dbias, n, |row, partial| {
                for (p, d) in partial.iter_mut().zip(&dout[row * oc..][..oc]) {
                    *p += d;
                }
            });
        }
    }
}

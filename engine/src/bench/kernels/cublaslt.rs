//! On a GPU only: cuBLASLt on our GEMM shapes (the model's three and the ceiling), the
//! reference to beat. bf16 inputs and output, f32 accumulation (`CUBLAS_COMPUTE_32F`), the
//! bias in the epilogue where our matmul has one, same method as the ops (warm-up, repeats,
//! rotated buffer sets). Entries: `kernels/cublaslt/<shape>/tflops` and
//! `kernels/matmul_<shape>/vs_cublaslt`.
//!
//! Nothing here may stop the suite: a failure (no libcublasLt, an unsupported shape, even a
//! panic inside cudarc, which unwraps in places) skips that shape's entries with a note.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kernels::cuda::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use kernels::cuda::bf16;
use kernels::ops::matmul::WeightLayout;
use kernels::{DType, Tensor};

use super::{ceiling_gemm, gemms, rate_entry, time_entry, Bench, Gemm};
use crate::bench::{Better, Entry};
use crate::Result;

pub fn compare(bench: &mut Bench, ordinal: usize) {
    let note = |bench: &Bench, what: String| {
        if !bench.quiet {
            eprintln!("bench kernels: cuBLASLt comparison: {what}");
        }
    };
    let blas = match catch_unwind(AssertUnwindSafe(|| handle(ordinal))) {
        Ok(Ok(blas)) => blas,
        Ok(Err(e)) => return note(bench, format!("skipped: {e}")),
        Err(panic) => return note(bench, format!("skipped: cudarc panicked: {}", panic_text(&panic))),
    };
    let shapes = gemms(&bench.shapes);
    for g in shapes.iter().chain([&ceiling_gemm(bench.device)]) {
        match catch_unwind(AssertUnwindSafe(|| one(bench, &blas, g))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => note(bench, format!("{} skipped: {e}", g.name)),
            Err(panic) => note(bench, format!("{} skipped: cudarc panicked: {}", g.name, panic_text(&panic))),
        }
    }
    kernels::memory::empty_cache(bench.device);
}

fn handle(ordinal: usize) -> Result<CudaBlasLT> {
    let dev = kernels::cuda::device(ordinal)?;
    CudaBlasLT::new(dev.stream().clone()).map_err(|e| cublas_error("creating a cuBLASLt handle", e).into())
}

fn cublas_error(op: &str, e: impl std::fmt::Debug) -> kernels::Error {
    kernels::Error::Cuda { op: op.into(), msg: format!("{e:?}") }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "(no message)".into())
}

/// Our row-major `out (rows, oc) = inp (rows, ic) @ W (+ bias)` in cuBLASLt's column-major
/// terms. A row-major (r x c) matrix is the column-major (c x r) matrix with the same
/// memory, so we ask for out^T (oc x rows) = W^T (oc x ic) @ inp^T (ic x rows):
/// - A = W: `InOut` W [ic, oc] row-major is W^T column-major (oc x ic, ld oc): no transpose;
///   `OutIn` W [oc, ic] row-major is column-major (ic x oc, ld ic): transposed.
/// - B = inp: row-major (rows, ic) is column-major (ic x rows, ld ic): no transpose.
/// - C = out: column-major (oc x rows, ld oc), the bias (oc) added to every column (the
///   BIAS epilogue's vector runs along m = oc), as our bias is added to every row.
pub fn config(g: &Gemm) -> MatmulConfig {
    let transa = g.layout == WeightLayout::OutIn;
    MatmulConfig {
        transa,
        transb: false,
        transc: false,
        m: g.oc as u64,
        n: g.rows as u64,
        k: g.ic as u64,
        alpha: 1.0,
        lda: if transa { g.ic } else { g.oc } as i64,
        ldb: g.ic as i64,
        beta: 0.0,
        ldc: g.oc as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    }
}

/// One shape: cuBLASLt's rate, and the ratio against our forward on the same shape.
fn one(bench: &mut Bench, blas: &CudaBlasLT, g: &Gemm) -> Result<()> {
    let ours = if g.name == "ceiling" {
        bench.gemm_ceiling_ms.clone()
    } else {
        let name = format!("kernels/matmul_{}_forward/time_ms", g.name);
        bench.results.entries.iter().find(|e| e.name == name).cloned()
    };
    let w_shape = match g.layout {
        WeightLayout::InOut => [g.ic, g.oc],
        WeightLayout::OutIn => [g.oc, g.ic],
    };
    let set_bytes = 2.0 * (g.rows * g.ic + g.ic * g.oc + g.rows * g.oc + g.oc) as f64;
    let count = bench.sets(set_bytes);
    let mut sets: Vec<(Tensor, Tensor, Option<Tensor>, Tensor)> = Vec::with_capacity(count);
    for _ in 0..count {
        let inp = bench.random(DType::Bf16, &[g.rows, g.ic], -1.0, 1.0)?;
        let weight = bench.random(DType::Bf16, &w_shape, -0.1, 0.1)?;
        let bias = if g.bias { Some(bench.random(DType::Bf16, &[g.oc], -0.1, 0.1)?) } else { None };
        sets.push((inp, weight, bias, bench.zeros(DType::Bf16, &[g.rows, g.oc])?));
    }
    let cfg = config(g);
    let times = bench.time(count, |i| {
        let (inp, weight, bias, out) = &mut sets[i];
        let bias = bias.as_ref().map(|b| b.cuda_slice::<bf16>()).transpose()?;
        let (a, b, c) = (weight.cuda_slice::<bf16>()?, inp.cuda_slice::<bf16>()?, out.cuda_slice_mut::<bf16>()?);
        // SAFETY: the sizes match `cfg` (see `config`): A = weight holds ic * oc elements read
        // as (oc x ic, ld oc) or transposed (ic x oc, ld ic); B = inp rows * ic elements as
        // (ic x rows, ld ic); C = out rows * oc elements as (oc x rows, ld oc); the bias has
        // oc elements. All on the compute stream `blas` was made with.
        unsafe { blas.matmul(cfg, a, b, c, bias, None) }.map_err(|e| cublas_error("cuBLASLt matmul", e))?;
        Ok(())
    })?;
    let extra = serde_json::json!({"M": g.rows, "K": g.ic, "N": g.oc, "layout": format!("{:?}", g.layout), "bias": g.bias, "library": "cublaslt"});
    let hash = bench.workload(&format!("cublaslt_{}", g.name), count, extra);
    let time = time_entry(format!("kernels/cublaslt/{}/time_ms", g.name), &hash, &times)?;
    let rate = rate_entry(format!("kernels/cublaslt/{}/tflops", g.name), "TFLOP/s", &time, g.flops() / 1e12);
    if !bench.quiet {
        eprintln!("bench kernels: cuBLASLt {:<18} {:>10.4} ms {:>10.3} TFLOP/s", g.name, time.median, rate.median);
    }
    bench.results.entries.push(rate);
    if let Some(ours) = ours {
        bench.results.entries.push(vs_cublaslt(&ours, &time, g.name));
    }
    Ok(())
}

/// `kernels/matmul_<shape>/vs_cublaslt`: cuBLASLt's time over ours (unit "ratio", higher is
/// better): > 1 means our GEMM is faster, 0.5 that it takes twice cuBLASLt's time. Median =
/// the ratio of the medians; min = cuBLASLt's fastest over our slowest, max = cuBLASLt's
/// slowest over our fastest. In our forward's workload (the shapes).
fn vs_cublaslt(ours: &Entry, cublaslt: &Entry, shape: &str) -> Entry {
    Entry {
        name: format!("kernels/matmul_{shape}/vs_cublaslt"),
        unit: "ratio".into(),
        better: Better::Higher,
        median: cublaslt.median / ours.median,
        min: cublaslt.min / ours.max,
        max: cublaslt.max / ours.min,
        samples: ours.samples.min(cublaslt.samples),
        workload: ours.workload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_major_config_of_our_layouts() {
        let qkv = Gemm { name: "qkv", rows: 4, ic: 3, oc: 9, layout: WeightLayout::InOut, bias: true };
        let c = config(&qkv);
        assert_eq!((c.transa, c.transb, c.m, c.n, c.k, c.lda, c.ldb, c.ldc), (false, false, 9, 4, 3, 9, 3, 9));
        let head = Gemm { name: "lm_head", rows: 4, ic: 3, oc: 10, layout: WeightLayout::OutIn, bias: false };
        let c = config(&head);
        assert_eq!((c.transa, c.transb, c.m, c.n, c.k, c.lda, c.ldb, c.ldc), (true, false, 10, 4, 3, 3, 3, 10));
    }

    #[test]
    fn ratio_above_one_means_we_are_faster() {
        let e = |median, min, max| Entry { name: "x".into(), unit: "ms".into(), better: Better::Lower, median, min, max, samples: 20, workload: "w".into() };
        let r = vs_cublaslt(&e(1.0, 0.9, 1.2), &e(2.0, 1.8, 2.4), "qkv");
        assert_eq!((r.median, r.min, r.max), (2.0, 1.5, 2.4 / 0.9));
        assert_eq!(r.name, "kernels/matmul_qkv/vs_cublaslt");
    }
}

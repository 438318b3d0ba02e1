//! Small shared pieces of the CPU backend: a strided GEMM wrapper and a deterministic
//! chunked column reduction.

use rayon::prelude::*;

/// Rows per chunk in reductions over rows. Fixed (not derived from the thread count) so
/// the summation order, and hence every bit of the result, does not depend on the machine.
pub const REDUCE_CHUNK_ROWS: usize = 256;

/// A raw pointer that may cross threads. Used where parallel tasks write disjoint strided
/// regions of one buffer (attention heads), which slices cannot express.
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);
// SAFETY: users guarantee that concurrent tasks touch disjoint elements.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method (not field access) so closures capture the whole Send wrapper.
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// A strided matrix: element (i, j) at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub struct Mat<P> {
    pub ptr: P,
    pub rs: isize,
    pub cs: isize,
}

impl Mat<*const f32> {
    pub fn rows(ptr: *const f32, rs: usize) -> Self {
        Self { ptr, rs: rs as isize, cs: 1 }
    }
    /// The transpose of a row-major matrix with row stride `rs`.
    pub fn trans(ptr: *const f32, rs: usize) -> Self {
        Self { ptr, rs: 1, cs: rs as isize }
    }
}

/// dst (m x n) = [dst +] scale * lhs (m x k) @ rhs (k x n).
///
/// # Safety
/// Every pointer must be valid for the elements its strides reach, and `dst` must not
/// alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: Mat<*mut f32>,
    accumulate: bool,
    lhs: Mat<*const f32>,
    rhs: Mat<*const f32>,
    scale: f32,
    parallel: bool,
) {
    let par = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m, n, k, dst.ptr, dst.cs, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs,
        1.0, scale, false, false, false, par,
    );
}

/// acc[j] += sum over rows i of f(row i)[j], for `rows` of width `width`, reduced in a fixed
/// order: rows are cut into fixed chunks, each chunk sums into its own partial, and the
/// partials are added in chunk order. `f(row, partial)` adds row `row`'s contribution.
pub fn reduce_rows_into<F>(acc: &mut [f32], rows: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let width = acc.len();
    let chunks = rows.div_ceil(REDUCE_CHUNK_ROWS);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut partial = vec![0.0f32; width];
            let end = ((c + 1) * REDUCE_CHUNK_ROWS).min(rows);
            for row in c * REDUCE_CHUNK_ROWS..end {
                f(row, &mut partial);
            }
            partial
        })
        .collect();
    for partial in &partials {
        for (a, p) in acc.iter_mut().zip(partial) {
            *a += p;
        }
    }
}

//! Benchmarks. Each binary measures one thing and prints medians over repeated runs; the
//! reference implementations they are compared with live in `benches/reference/`.

/// Median of a non-empty slice.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    engine::bench::median_sorted(&v)
}

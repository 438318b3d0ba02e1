//! Vectorizable math for the CPU backend. libm's `tanhf`/`expf` are scalar calls that
//! stop the compiler from vectorizing a loop; they took over a third of a training step.
//! `exp` below is branch-free (Cody-Waite range reduction + a degree-6 polynomial, within
//! ~2 ulp over the f32 range), so loops over it vectorize, and `multiversion!` compiles
//! such loops again for AVX2 + FMA and for AVX-512, picked at run time.

/// e^x for finite x; saturates below -87.3 (to ~1e-38, not 0) and above 88.3.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it to a float with |v| < 2^22 leaves round(v) in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let y = p * z + r + 1.0;
    // 2^n built from the exponent bits: the low bits of (n + 127 + MAGIC) are n + 127
    // (in 1..=255 after the clamp), and the shift drops MAGIC's own bits. Unlike `n as i32`,
    // whose saturating NaN-checked conversion compiles to scalar code, this vectorizes.
    y * f32::from_bits((n + (MAGIC + 127.0)).to_bits() << 23)
}

/// Lanes of the reductions below: independent accumulators the compiler keeps in vector
/// registers (a plain `fold` is a serial chain, since float addition is not associative).
const LANES: usize = 16;

/// The largest element (NEG_INFINITY for an empty slice).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    let m = tail.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    acc.iter().fold(m, |m, &v| m.max(v))
}

/// sum_i f(i) over 0..n, in LANES interleaved partial sums (a fixed order: deterministic).
#[inline(always)]
pub fn sum_by(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let full = n / LANES * LANES;
    let mut i = 0;
    while i < full {
        for l in 0..LANES {
            acc[l] += f(i + l);
        }
        i += LANES;
    }
    let mut tail = 0.0f32;
    for j in full..n {
        tail += f(j);
    }
    acc.iter().sum::<f32>() + tail
}

/// sum_i a[i] * b[i].
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    sum_by(n, |i| a[i] * b[i])
}

/// 1 / (1 + e^-x), without the cancellation of (1 + tanh) for negative inputs.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Defines `fn $name(args)` whose body is compiled three times: for the baseline target,
/// with AVX2 + FMA, and with AVX-512, chosen at run time by CPU feature detection.
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: this CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: this CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }
}

//! Learning rate: linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to
//! `min_lr` at `max_steps`.

/// The learning rate for `step` (0-based): `lr * (step + 1) / warmup` while
/// `step < warmup`, then a cosine from `lr` down to `min_lr` at `max_steps`; `min_lr` from
/// `max_steps` on, and for every step after the warm-up when `max_steps <= warmup`.
pub fn learning_rate(step: u64, lr: f64, min_lr: f64, warmup: u64, max_steps: u64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    if step >= max_steps || max_steps <= warmup {
        return min_lr;
    }
    let progress = (step - warmup) as f64 / (max_steps - warmup) as f64;
    min_lr + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (lr - min_lr)
}

#[cfg(test)]
mod tests {
    use super::learning_rate;

    #[test]
    fn warmup_then_cosine() {
        assert!((learning_rate(0, 1.0, 0.1, 10, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(9, 1.0, 0.1, 10, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(10, 1.0, 0.1, 10, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(60, 1.0, 0.1, 10, 110) - 0.55).abs() < 1e-12);
        assert!((learning_rate(110, 1.0, 0.1, 10, 110) - 0.1).abs() < 1e-12);
    }
}

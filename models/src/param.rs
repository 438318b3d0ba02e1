use kernels::{Device, Tensor};

/// A trainable parameter: its value, its gradient (same shape; accumulated by backward,
/// reset by the trainer) and how the optimizer and checkpoints treat it.
#[derive(Clone, Debug)]
pub struct Param {
    /// Stable name, used in checkpoints (Hugging Face GPT-2 names for GPT-2).
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
    /// Whether AdamW's weight decay applies (by default: matmul weights only).
    pub weight_decay: bool,
    /// The shape written to checkpoints. The stored tensor may be larger (the vocabulary
    /// padded for speed); the export is its leading `export_shape` block, so padding never
    /// leaks out.
    pub export_shape: Vec<usize>,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor, weight_decay: bool) -> Self {
        let grad = Tensor::zeros(value.device(), value.shape());
        let export_shape = value.shape().to_vec();
        Self { name: name.into(), value, grad, weight_decay, export_shape }
    }

    pub fn numel(&self) -> usize {
        self.value.numel()
    }
}

/// Deterministic N(0, std^2) values from a seeded generator (Box-Muller), for initialisation.
pub fn normal(rng: &mut fastrand::Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = rng.f64().max(f64::MIN_POSITIVE);
            let u2 = rng.f64();
            (std as f64 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

pub fn constant(device: Device, shape: &[usize], value: f32) -> Tensor {
    let mut t = Tensor::zeros(device, shape);
    if value != 0.0 {
        t.f32_mut().expect("fresh f32 tensor").fill(value);
    }
    t
}

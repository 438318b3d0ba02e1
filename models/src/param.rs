//! Parameters ([`Param`]), where they are made ([`Placement`]) and in which precision
//! ([`Precision`]), and the initialisers layers draw them with ([`normal`], [`constant`],
//! [`vocab_rows`]).

use kernels::{DType, Device, Tensor};

use crate::{Error, Result};

/// How a model computes.
///
/// | precision | `Param::value` (master) | `Param::working` | `Param::grad` | activations |
/// |---|---|---|---|---|
/// | `Fp32` | f32 | none (forward reads `value`) | f32 | f32 |
/// | `Bf16` | f32 | bf16 copy of `value` | f32 | bf16 |
///
/// Mean/rstd of LayerNorm, the attention state saved for backward and the per-row losses
/// are f32 in both. AdamW's m and v are f32. bf16 needs a CUDA device: the CPU backend
/// computes in f32 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    Fp32,
    /// bf16 activations and working weights, f32 master weights and gradients.
    Bf16,
}

impl Precision {
    /// The dtype of activations and of the parameter copies forward and backward read.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 => DType::Bf16,
        }
    }

    /// "fp32" or "bf16", as configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Errors when `device` cannot compute in this precision (bf16 on the CPU).
    pub fn check(self, device: Device) -> Result<()> {
        if self == Precision::Bf16 && device == Device::Cpu {
            return Err(Error::Config("bf16 precision needs a CUDA device; the CPU computes in fp32 only".into()));
        }
        Ok(())
    }
}

/// Where new parameters are made and in which precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Where parameters (and so activations) live.
    pub device: Device,
    /// How the model computes there.
    pub precision: Precision,
}

impl Placement {
    /// Errors when `device` cannot compute in `precision` (bf16 on the CPU).
    pub fn new(device: Device, precision: Precision) -> Result<Self> {
        precision.check(device)?;
        Ok(Self { device, precision })
    }

    /// The CPU in fp32.
    pub fn cpu() -> Self {
        Self { device: Device::Cpu, precision: Precision::Fp32 }
    }
}

/// A trainable parameter: its value, its gradient (same shape; accumulated by backward,
/// reset by the trainer) and how the optimizer and checkpoints treat it.
///
/// ```
/// use kernels::Tensor;
/// use models::param::constant;
/// use models::{Param, Placement};
///
/// // A per-channel scale of 4 ones, not decayed, on the CPU in fp32.
/// let mut p = Param::new("scale.weight", constant(&[4], 1.0), false, Placement::cpu())?;
/// assert_eq!((p.numel(), p.value.to_vec()), (4, vec![1.0; 4]));
/// assert!(p.grad.to_vec().iter().all(|&g| g == 0.0));
/// assert!(p.working.is_none(), "fp32: forward reads `value`");
///
/// p.set_value(&Tensor::from_vec(&[4], vec![0.5, 1.0, 1.5, 2.0])?)?;
/// assert_eq!(p.compute().to_vec(), [0.5, 1.0, 1.5, 2.0]);
/// assert!(p.set_value(&Tensor::from_vec(&[3], vec![0.0; 3])?).is_err(), "the shape is fixed");
///
/// // Exported as one tensor under its name; a fused parameter names its parts.
/// assert_eq!(p.exports()[0].name, "scale.weight");
/// # Ok::<(), models::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Param {
    /// Stable name, used in checkpoints (Hugging Face GPT-2 names for GPT-2).
    pub name: String,
    /// The parameter, f32 on the model's device: in bf16 precision the fp32 master weights
    /// that the optimizer updates and checkpoints save. After changing it, call
    /// [`Param::refresh_working`] (or use [`Param::set_value`]).
    pub value: Tensor,
    /// bf16 precision: the bf16 working copy of `value` that forward and backward read,
    /// rewritten by the optimizer's update. `None` in fp32 (forward reads `value`).
    pub working: Option<Tensor>,
    /// d loss / d value: f32 on the model's device, in both precisions (the launchers
    /// accumulate f32 parameter gradients from bf16 activations).
    pub grad: Tensor,
    /// Whether AdamW's weight decay applies (by default: matmul weights only).
    pub weight_decay: bool,
    /// The shape written to checkpoints. The stored tensor may be larger (the vocabulary
    /// padded for speed); the export is its leading `export_shape` block, so padding never
    /// leaks out.
    pub export_shape: Vec<usize>,
    /// A parameter stored fused but exported as several tensors: the `export_shape` block
    /// split along its first dimension into these `(name, rows)` parts, in order (rows
    /// summing to `export_shape[0]`). A fused q|k|v projection, stored (out, in), is saved as
    /// Hugging Face's `q_proj`, `k_proj` and `v_proj`. Empty: one tensor named `name`.
    pub export_parts: Vec<(String, usize)>,
}

/// One tensor a parameter is exported as (see [`Param::exports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The tensor's name in checkpoints.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements, as a range of the parameter's stored (row-major) values.
    pub range: std::ops::Range<usize>,
}

impl Param {
    /// A parameter from initial values made on the host (`host`, f32), uploaded to
    /// `at.device`, with a bf16 working copy in bf16 precision and a zero f32 gradient.
    /// Generating on the host makes the initial weights identical on every device.
    pub fn new(name: impl Into<String>, host: Tensor, weight_decay: bool, at: Placement) -> Result<Self> {
        let value = host.to_device(at.device)?;
        let grad = Tensor::try_zeros(at.device, DType::F32, value.shape())?;
        let export_shape = value.shape().to_vec();
        let working = match at.precision {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(value.to_dtype(DType::Bf16)?),
        };
        Ok(Self { name: name.into(), value, working, grad, weight_decay, export_shape, export_parts: Vec::new() })
    }

    /// The tensors this parameter is exported as, in order: one named [`Param::name`] of
    /// [`Param::export_shape`], or one per [`Param::export_parts`] entry. Each is a
    /// contiguous range of the stored values (the export block is the stored tensor's
    /// leading block, so padding is never exported).
    pub fn exports(&self) -> Vec<Export> {
        let n: usize = self.export_shape.iter().product();
        if self.export_parts.is_empty() {
            return vec![Export { name: self.name.clone(), shape: self.export_shape.clone(), range: 0..n }];
        }
        let row: usize = self.export_shape[1..].iter().product();
        let mut start = 0;
        self.export_parts
            .iter()
            .map(|(name, rows)| {
                let mut shape = self.export_shape.clone();
                shape[0] = *rows;
                let range = start..start + rows * row;
                start = range.end;
                Export { name: name.clone(), shape, range }
            })
            .collect()
    }

    /// The tensor forward and backward read: the working copy in bf16, else `value`.
    pub fn compute(&self) -> &Tensor {
        self.working.as_ref().unwrap_or(&self.value)
    }

    /// The gradient to accumulate into and the tensor backward reads, borrowed together.
    pub fn grad_and_compute(&mut self) -> (&mut Tensor, &Tensor) {
        (&mut self.grad, self.working.as_ref().unwrap_or(&self.value))
    }

    /// Replaces the value (e.g. from a checkpoint; any device, f32, the stored shape),
    /// moving it to this parameter's device and refreshing the working copy.
    pub fn set_value(&mut self, value: &Tensor) -> Result<()> {
        value.expect_shape("Param::set_value", "value", self.value.shape())?;
        if value.dtype() != DType::F32 {
            return Err(Error::Input(format!("{}: parameter values are f32, got {}", self.name, value.dtype())));
        }
        self.value = value.to_device(self.value.device())?;
        self.refresh_working()
    }

    /// Rewrites the bf16 working copy from `value` (a no-op in fp32).
    pub fn refresh_working(&mut self) -> Result<()> {
        if let Some(w) = &mut self.working {
            kernels::ops::cast::cast(w, &self.value)?;
        }
        Ok(())
    }

    /// Elements stored (padding included; see [`Param::export_shape`] for the exported ones).
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

/// A (padded_vocab, C) parameter named `name`, not decayed: `vocab` rows N(0, std^2), then
/// zero padding rows, which no token and no target reaches (so they stay zero) and which
/// exports cut (`export_shape` (vocab, C)). A token embedding, or an untied classifier (set
/// its `weight_decay` if it should be decayed, as Llama's `lm_head` is).
pub fn vocab_rows(at: Placement, name: &str, vocab: usize, padded_vocab: usize, c: usize, std: f32, rng: &mut fastrand::Rng) -> Result<Param> {
    let mut data = normal(rng, vocab * c, std);
    data.resize(padded_vocab * c, 0.0);
    let mut p = Param::new(name, Tensor::from_vec(&[padded_vocab, c], data)?, false, at)?;
    p.export_shape = vec![vocab, c];
    Ok(p)
}

/// A host f32 tensor filled with `value` (initial values, uploaded by [`Param::new`]).
pub fn constant(shape: &[usize], value: f32) -> Tensor {
    Tensor::from_vec(shape, vec![value; shape.iter().product()]).expect("length matches shape")
}

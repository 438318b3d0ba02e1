//! A gradient checker for layers and models: the analytic gradients of `backward` against
//! central finite differences, on the CPU in f32.
//!
//! A library user who writes a layer checks its backward in a few lines:
//!
//! ```
//! use kernels::{Device, Tensor};
//! use models::gradcheck::{check_layer, GradCheckOptions};
//! use models::layers::Linear;
//! use models::Placement;
//!
//! let mut rng = fastrand::Rng::with_seed(1);
//! let mut layer = Linear::new(Placement::cpu(), "proj", 4, 3, true, 0.5, &mut rng).unwrap();
//! let x = Tensor::from_vec(&[2, 4], (0..8).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap();
//! let report = check_layer(&mut layer, &x, &GradCheckOptions::default()).unwrap();
//! println!("{report}");
//! assert!(report.passed(), "{report}");
//! ```
//!
//! How a check works:
//!
//! - The loss is a fixed linear function of the output: L = sum(forward(x) * R), R uniform in
//!   [-1, 1) from the seed, so d L / d output = R and `backward(R)` gives the analytic
//!   gradients. A model's loss is its mean cross-entropy: `forward` with targets and
//!   `backward(1.0)` for the analytic gradients; for the central differences the same mean
//!   cross-entropy computed in f64 from the f32 logits of a `forward` without targets (or,
//!   for a model that keeps no logits, the f32 loss `forward` returns).
//! - At `probes` random elements of every parameter (and of `x`, unless it holds token ids)
//!   the element v is set to v + h and v - h, both rounded to f32, with h = eps * max(|v|, 1)
//!   (relative to the value, never below eps: a zero-initialised bias gets a step too), and
//!   the numeric gradient is (L(v+h) - L(v-h)) / (the step actually taken in f32). L is summed
//!   in f64 from the f32 outputs, so the only noise is the f32 rounding of the outputs. The
//!   element is then restored bit for bit.
//! - That noise sets a floor under what a central difference resolves: an output o rounds
//!   by up to f32::EPSILON * |o|, which moves L by f32::EPSILON * |o * dL/do|, so each
//!   evaluation of L may be off by f32::EPSILON * M, M = sum |o * dL/do| (a layer:
//!   sum |output * R|; a model: the mean over rows of sum |logit * dL/dlogit|), and the
//!   difference quotient by floor = f32::EPSILON * M / h. A probe passes when
//!   |analytic - numeric| <= max(tolerance * max(|analytic|, |numeric|), floor): relative above
//!   floor / tolerance, absolute against the floor below it. Such floor-limited probes are
//!   counted in the report, never skipped silently.
//!
//! Choosing the step: the default eps = 1e-3 keeps the truncation error (of order h^2) far
//! below the tolerance and suits a layer, whose L sums many outputs with gradients of order
//! one. A whole model's loss is one number of order one with small gradients: there
//! eps = 1e-2 lifts ten times more of them above the floor, and a tolerance of 2e-2 absorbs
//! the larger truncation error (the models' own tests run so).
//!
//! Parameters of a padded tensor (the vocabulary rows past V) are probed in their exported
//! block ([`Param::export_shape`]) only: the padding never reaches the loss.

use std::fmt;

use kernels::{DType, Device, Tensor};

use crate::layers::Layer;
use crate::{Error, Model, Param, Result};

/// How a gradient check probes (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckOptions {
    /// Random elements probed per tensor (every element of a tensor with fewer). Default 6.
    pub probes: usize,
    /// The relative step: an element v moves by eps * max(|v|, 1) either way. Default 1e-3.
    pub eps: f64,
    /// The largest relative error a probe may have above the floor. Default 1e-2.
    pub tolerance: f64,
    /// Seeds the choice of probed elements and the output weights R. Default 0.
    pub seed: u64,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        Self { probes: 6, eps: 1e-3, tolerance: 1e-2, seed: 0 }
    }
}

/// One probed element.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// Its index in the tensor (row-major).
    pub index: usize,
    /// d L / d element from `backward`.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
    /// |analytic - numeric| / max(|analytic|, |numeric|, floor / tolerance): the relative
    /// error, or, below the floor, the absolute error in units of floor / tolerance. The
    /// probe passes when it is at most the tolerance.
    pub error: f64,
    /// The floor this probe's step resolves (f32::EPSILON * M / h).
    pub floor: f64,
    /// Whether both gradients are below floor / tolerance, so the probe was compared in
    /// absolute terms against the floor.
    pub floor_limited: bool,
}

/// The probes of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorCheck {
    /// The parameter's name, or `input` for the layer's input.
    pub name: String,
    /// Elements the probes were drawn from (a padded parameter: its exported block).
    pub numel: usize,
    /// The probes, in the order they ran.
    pub probes: Vec<Probe>,
}

impl TensorCheck {
    /// The probe with the largest error (a NaN error counts as the largest).
    pub fn worst(&self) -> Option<&Probe> {
        self.probes.iter().max_by(|a, b| error_key(a.error).total_cmp(&error_key(b.error)))
    }

    /// Probes compared against the floor.
    pub fn floor_limited(&self) -> usize {
        self.probes.iter().filter(|p| p.floor_limited).count()
    }
}

/// What a check found: every probe of every tensor, and the verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckReport {
    /// Every probed tensor: the parameters in visiting order, then (a layer with a float
    /// input) `input`.
    pub tensors: Vec<TensorCheck>,
    /// The loss at the unperturbed values.
    pub loss: f64,
    /// The magnitude M the loss's f32 noise scales with: sum |output * R| (a model: the mean
    /// over rows of sum |logit * dL/dlogit|).
    pub magnitude: f64,
    /// The loss's f32 resolution floor: f32::EPSILON * M / eps, the smallest gradient the
    /// central difference resolves at an element with |v| <= 1 (larger values take larger
    /// steps and resolve proportionally smaller gradients).
    pub floor: f64,
    /// The options the check ran with.
    pub options: GradCheckOptions,
}

impl GradCheckReport {
    /// Whether every probe's error is within the tolerance (a NaN never is); true when no
    /// probe ran (a layer without parameters and with a token-id input).
    pub fn passed(&self) -> bool {
        self.probes().all(|p| p.error <= self.options.tolerance)
    }

    /// The largest error of any probe (NaN if one is NaN; 0 without probes).
    pub fn worst(&self) -> f64 {
        self.probes().map(|p| p.error).fold(0.0, |m: f64, e| if e.is_nan() || m.is_nan() { f64::NAN } else { m.max(e) })
    }

    /// Every probe of every tensor.
    pub fn probes(&self) -> impl Iterator<Item = &Probe> {
        self.tensors.iter().flat_map(|t| &t.probes)
    }

    /// Probes compared against the floor, over all tensors.
    pub fn floor_limited(&self) -> usize {
        self.tensors.iter().map(TensorCheck::floor_limited).sum()
    }

    /// Probes over the tolerance (or NaN).
    pub fn failures(&self) -> usize {
        self.probes().filter(|p| p.error.is_nan() || p.error > self.options.tolerance).count()
    }
}

/// A NaN sorts above every number.
fn error_key(e: f64) -> f64 {
    if e.is_nan() {
        f64::INFINITY
    } else {
        e
    }
}

impl fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let n: usize = self.tensors.iter().map(|t| t.probes.len()).sum();
        writeln!(
            f,
            "gradient check: {} tensors, {n} probes, step {:.0e} * max(|v|, 1), tolerance {:.0e}",
            self.tensors.len(),
            o.eps,
            o.tolerance
        )?;
        writeln!(
            f,
            "loss {:.6e}; f32 resolution floor {:.2e} (f32::EPSILON * {:.3e} / {:.0e}): gradients below {:.2e} are compared against the floor \
             ({} of {n} probes)",
            self.loss,
            self.floor,
            self.magnitude,
            o.eps,
            self.floor / o.tolerance,
            self.floor_limited()
        )?;
        let width = self.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0).max(6);
        writeln!(f, "{:<width$}  {:>6}  {:>7}  {:>11}  {:>13}  {:>13}  {:>9}", "tensor", "probes", "floored", "worst error", "analytic", "numeric", "at")?;
        for t in &self.tensors {
            let Some(w) = t.worst() else { continue };
            let flag = if w.error <= o.tolerance { "" } else { "  FAILED" };
            writeln!(
                f,
                "{:<width$}  {:>6}  {:>7}  {:>11.2e}  {:>13.6e}  {:>13.6e}  {:>9}{flag}",
                t.name,
                t.probes.len(),
                t.floor_limited(),
                w.error,
                w.analytic,
                w.numeric,
                format!("[{}]", w.index)
            )?;
        }
        match self.failures() {
            0 => write!(f, "passed: worst error {:.2e} <= {:.0e}", self.worst(), o.tolerance),
            k => write!(f, "FAILED: {k} of {n} probes over the tolerance {:.0e} (worst {:.2e})", o.tolerance, self.worst()),
        }
    }
}

/// Checks `layer`'s backward at input `x`, on the CPU in f32: L = sum(forward(x) * R) with
/// fixed random R (from `options.seed`), d L / d params and d L / d x from `backward(R)`,
/// against central differences of L summed in f64 at `options.probes` random elements of
/// every parameter and of `x` (see the module docs for the step and the floor). A token-id
/// (u32) input is not probed (it has no gradient).
///
/// The parameters' gradients are zeroed first; afterwards they hold the analytic gradients
/// and every value is restored bit for bit. What the layer saved is released.
pub fn check_layer(layer: &mut dyn Layer, x: &Tensor, options: &GradCheckOptions) -> Result<GradCheckReport> {
    check_options(options)?;
    check_params("check_layer", &mut |f| layer.visit_params(f))?;
    if x.device() != Device::Cpu {
        return Err(Error::Input(format!("check_layer: the input must be on the CPU, not {}", x.device())));
    }
    let probe_input = x.dtype() == DType::F32;
    let mut rng = fastrand::Rng::with_seed(options.seed);

    zero_grads(&mut |f| layer.visit_params_mut(f))?;
    let out = layer.forward(x)?;
    if out.dtype() != DType::F32 || out.device() != Device::Cpu {
        return Err(Error::Input(format!("check_layer: the output must be f32 on the CPU, got {} on {}", out.dtype(), out.device())));
    }
    let r: Vec<f32> = (0..out.numel()).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let out_values = out.f32()?;
    let loss: f64 = out_values.iter().zip(&r).map(|(&o, &w)| o as f64 * w as f64).sum();
    let magnitude: f64 = out_values.iter().zip(&r).map(|(&o, &w)| (o as f64 * w as f64).abs()).sum();
    let dout = Tensor::from_vec(out.shape(), r.clone())?;
    drop(out);
    let dx = layer.backward(&dout)?;
    let analytic = grads(&mut |f| layer.visit_params(f));
    let dx = if probe_input { dx.f32()?.to_vec() } else { Vec::new() };

    let loss_at = |layer: &mut dyn Layer, x: &Tensor| -> Result<f64> {
        let out = layer.forward(x)?;
        Ok(out.f32()?.iter().zip(&r).map(|(&o, &w)| o as f64 * w as f64).sum())
    };
    let mut tensors = Vec::new();
    for (k, (name, limit, grad)) in analytic.iter().enumerate() {
        let mut probes = Vec::new();
        for index in pick(&mut rng, *limit, options.probes) {
            let original = param_value(&mut |f| layer.visit_params_mut(f), k, index)?;
            let (plus, minus) = steps(original, options.eps);
            set_param(&mut |f| layer.visit_params_mut(f), k, index, plus)?;
            let l_plus = loss_at(layer, x);
            set_param(&mut |f| layer.visit_params_mut(f), k, index, minus)?;
            let l_minus = loss_at(layer, x);
            set_param(&mut |f| layer.visit_params_mut(f), k, index, original)?;
            probes.push(probe(index, grad[index] as f64, (l_plus?, l_minus?), plus as f64 - minus as f64, magnitude, options));
        }
        tensors.push(TensorCheck { name: name.clone(), numel: *limit, probes });
    }
    if probe_input {
        let mut xp = Tensor::from_vec(x.shape(), x.f32()?.to_vec())?;
        let mut probes = Vec::new();
        for index in pick(&mut rng, x.numel(), options.probes) {
            let original = xp.f32()?[index];
            let (plus, minus) = steps(original, options.eps);
            xp.f32_mut()?[index] = plus;
            let l_plus = loss_at(layer, &xp)?;
            xp.f32_mut()?[index] = minus;
            let l_minus = loss_at(layer, &xp)?;
            xp.f32_mut()?[index] = original;
            probes.push(probe(index, dx[index] as f64, (l_plus, l_minus), plus as f64 - minus as f64, magnitude, options));
        }
        tensors.push(TensorCheck { name: "input".into(), numel: x.numel(), probes });
    }
    layer.release();
    Ok(report(tensors, loss, magnitude, options))
}

/// Checks a whole model's backward on the CPU in f32: its mean cross-entropy on `inputs` and
/// `targets` (token ids (B,T); `forward` with targets, `backward(1.0)`) against central
/// differences of that loss, computed in f64 from the model's logits, at `options.probes`
/// random elements of every parameter (the inputs are token ids: not probed). See the module
/// docs for the step and the floor. Errors if the loss `forward` returns is not the mean
/// cross-entropy of the logits (beyond f32 rounding). Gradients are zeroed first and hold the
/// analytic ones afterwards; values are restored bit for bit; what the model kept is
/// released.
pub fn check_model(model: &mut dyn Model, inputs: &Tensor, targets: &Tensor, options: &GradCheckOptions) -> Result<GradCheckReport> {
    check_options(options)?;
    check_params("check_model", &mut |f| model.visit_params(f))?;
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let rows = inputs.numel();
    let target_ids = targets.to_host()?.u32()?.to_vec();
    let vocab = model.vocab_size();
    // The loss in f64 from the f32 logits (forward without targets), where the model keeps
    // them; else the model's own (f32) loss.
    let loss_of = |model: &mut dyn Model| -> Result<(f64, f64)> {
        if model.forward(inputs, None)?.is_none() {
            if let Some(logits) = model.logits() {
                return Ok(cross_entropy(&logits.to_host()?.try_to_vec()?, &target_ids, rows, vocab));
            }
        }
        let loss = model.forward(inputs, Some(targets))?.ok_or_else(|| Error::Input("check_model: forward with targets returned no loss".into()))?;
        Ok((loss as f64, (loss as f64).abs()))
    };
    zero_grads(&mut |f| model.visit_params_mut(f))?;
    let (loss64, magnitude) = loss_of(model)?;
    let loss = model.forward(inputs, Some(targets))?.ok_or_else(|| Error::Input("check_model: forward with targets returned no loss".into()))? as f64;
    // The two ways to the loss agree to f32 rounding, or the differences check nothing.
    let gap = (loss - loss64).abs();
    if gap.is_nan() || gap > 1e-4 * loss64.abs() + 1e-6 {
        return Err(Error::Input(format!(
            "check_model: the loss forward returns ({loss}) is not the mean cross-entropy of the model's logits ({loss64})"
        )));
    }
    model.backward(1.0)?;
    let analytic = grads(&mut |f| model.visit_params(f));
    let mut tensors = Vec::new();
    for (k, (name, limit, grad)) in analytic.iter().enumerate() {
        let mut probes = Vec::new();
        for index in pick(&mut rng, *limit, options.probes) {
            let original = param_value(&mut |f| model.visit_params_mut(f), k, index)?;
            let (plus, minus) = steps(original, options.eps);
            set_param(&mut |f| model.visit_params_mut(f), k, index, plus)?;
            let l_plus = loss_of(model).map(|l| l.0);
            set_param(&mut |f| model.visit_params_mut(f), k, index, minus)?;
            let l_minus = loss_of(model).map(|l| l.0);
            set_param(&mut |f| model.visit_params_mut(f), k, index, original)?;
            probes.push(probe(index, grad[index] as f64, (l_plus?, l_minus?), plus as f64 - minus as f64, magnitude, options));
        }
        tensors.push(TensorCheck { name: name.clone(), numel: *limit, probes });
    }
    model.release();
    Ok(report(tensors, loss, magnitude, options))
}

/// (mean cross-entropy over `n` rows of `logits` (n, Vp) against `targets`, the first `vocab`
/// columns, in f64; M = its noise magnitude, mean over rows of sum_v |logit_v * dL/dlogit_v|).
fn cross_entropy(logits: &[f32], targets: &[u32], n: usize, vocab: usize) -> (f64, f64) {
    let vp = logits.len() / n.max(1);
    let (mut loss, mut magnitude) = (0.0, 0.0);
    for (row, &target) in logits.chunks(vp).zip(targets) {
        let row = &row[..vocab];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
        let z: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
        loss += max + z.ln() - row[target as usize] as f64;
        for (v, &l) in row.iter().enumerate() {
            let p = (l as f64 - max).exp() / z - if v == target as usize { 1.0 } else { 0.0 };
            magnitude += (p * l as f64).abs();
        }
    }
    (loss / n as f64, magnitude / n as f64)
}

type Visit<'a> = dyn FnMut(&mut dyn FnMut(&Param)) + 'a;
type VisitMut<'a> = dyn FnMut(&mut dyn FnMut(&mut Param)) + 'a;

fn check_options(o: &GradCheckOptions) -> Result<()> {
    if !(o.eps > 0.0 && o.eps.is_finite() && o.tolerance > 0.0 && o.tolerance.is_finite()) {
        return Err(Error::Input(format!("gradient check: eps ({}) and tolerance ({}) must be positive and finite", o.eps, o.tolerance)));
    }
    Ok(())
}

/// Errors unless every parameter is an f32 CPU tensor without a bf16 working copy.
fn check_params(what: &str, visit: &mut Visit) -> Result<()> {
    let mut bad = None;
    visit(&mut |p| {
        if bad.is_none() && (p.value.device() != Device::Cpu || p.value.dtype() != DType::F32 || p.working.is_some()) {
            bad = Some(format!("{what}: parameter {} must be f32 on the CPU in fp32 precision (it is {} on {})", p.name, p.value.dtype(), p.value.device()));
        }
    });
    bad.map_or(Ok(()), |m| Err(Error::Input(m)))
}

fn zero_grads(visit: &mut VisitMut) -> Result<()> {
    let mut result = Ok(());
    visit(&mut |p| {
        if result.is_ok() {
            result = p.grad.fill_zero();
        }
    });
    Ok(result?)
}

/// (name, elements probed: the exported block, gradient) of every parameter, in order.
fn grads(visit: &mut Visit) -> Vec<(String, usize, Vec<f32>)> {
    let mut out = Vec::new();
    visit(&mut |p| out.push((p.name.clone(), p.export_shape.iter().product::<usize>().min(p.numel()), p.grad.to_vec())));
    out
}

/// Up to `probes` distinct indices in 0..n, in random order (all of them when n <= probes).
fn pick(rng: &mut fastrand::Rng, n: usize, probes: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut all);
    all.truncate(probes);
    all
}

/// v + h and v - h rounded to f32, h = eps * max(|v|, 1).
fn steps(v: f32, eps: f64) -> (f32, f32) {
    let h = eps * (v.abs() as f64).max(1.0);
    ((v as f64 + h) as f32, (v as f64 - h) as f32)
}

fn param_value(visit: &mut VisitMut, k: usize, index: usize) -> Result<f32> {
    let mut value = None;
    let mut i = 0;
    visit(&mut |p| {
        if i == k {
            value = Some(p.value.f32().map(|v| v[index]));
        }
        i += 1;
    });
    Ok(value.expect("parameter k exists")?)
}

/// Sets element `index` of the `k`-th parameter (refreshing its working copy).
fn set_param(visit: &mut VisitMut, k: usize, index: usize, value: f32) -> Result<()> {
    let mut result = Ok(());
    let mut i = 0;
    visit(&mut |p| {
        if i == k {
            result = (|| {
                p.value.f32_mut()?[index] = value;
                p.refresh_working()
            })();
        }
        i += 1;
    });
    result
}

fn probe(index: usize, analytic: f64, (l_plus, l_minus): (f64, f64), step: f64, magnitude: f64, o: &GradCheckOptions) -> Probe {
    let numeric = (l_plus - l_minus) / step;
    // Each L is off by up to f32::EPSILON * M; the difference of two over the step.
    let floor = f32::EPSILON as f64 * magnitude / (step / 2.0);
    let larger = analytic.abs().max(numeric.abs());
    let floor_limited = larger * o.tolerance < floor;
    let error = (analytic - numeric).abs() / larger.max(floor / o.tolerance).max(f64::MIN_POSITIVE);
    Probe { index, analytic, numeric, error, floor, floor_limited }
}

fn report(tensors: Vec<TensorCheck>, loss: f64, magnitude: f64, options: &GradCheckOptions) -> GradCheckReport {
    let floor = f32::EPSILON as f64 * magnitude / options.eps;
    GradCheckReport { tensors, loss, magnitude, floor, options: options.clone() }
}

//! Multi-tensor launches on CUDA (kernels/cuda/multi_tensor.cu): the global gradient norm,
//! AdamW with the clip factor read on the device, and zeroing, each as one kernel over a
//! whole table of tensors instead of one launch per tensor. A GPT-2 step's optimizer and
//! zeroing go from about 600 launches to four (squares, finalize, update, zero).
//!
//! A [`TensorTable`] records, per tensor, its device pointers, length and flags, and the
//! launch's blocks it owns (a count from its length only, the per-tensor norm's rule, so the
//! norm is bit for bit the per-tensor one and the same on every GPU). The first launch uploads
//! the table (64 bytes per tensor, an asynchronous copy into a pool buffer: no host wait);
//! later launches from the same table reuse it.
//!
//! The table holds raw device pointers, not borrows, so that a caller can fill it while
//! visiting a model's parameters one at a time: the launches are `unsafe`, and their
//! contract is that every tensor pushed is still alive, unmoved and not otherwise in use.
//! The CPU has no table: the per-tensor ops in [`super::adamw`] and [`super::norm`] are the
//! reference, and the tests compare the two on the GPU.

use std::sync::Arc;

use crate::cuda::{self as cu, CudaDevice, DevicePtr, LaunchConfig, PushKernelArg};
use crate::ops::adamw::AdamWStep;
use crate::{DType, Device, Error, Result, Tensor};

const OP: &str = "multi-tensor";
const BLOCK: u32 = 256;
const GRAD_BF16: u32 = 1;
const DECAYS: u32 = 2;

/// [`TensorTable::adamw`]'s status: the update was applied and everything it wrote is finite.
pub const UPDATE_APPLIED: f32 = 0.0;
/// [`TensorTable::adamw`]'s status: the gradient norm was NaN or infinite, so nothing was
/// updated (parameters, moments and working copies are as they were).
pub const UPDATE_SKIPPED: f32 = 1.0;
/// [`TensorTable::adamw`]'s status: the update made a parameter or a moment NaN or infinite.
pub const UPDATE_NONFINITE: f32 = 2.0;

/// Blocks per tensor: norm.cu's per-tensor rule (`ops::norm::cuda`), at most 2048.
fn blocks_for(n: usize) -> usize {
    n.div_ceil(BLOCK as usize * 16).clamp(1, 2048)
}

/// multi_tensor.cu `Desc`, 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Desc {
    param: u64,
    copy: u64,
    grad: u64,
    m: u64,
    v: u64,
    n: u64,
    block_begin: u32,
    blocks: u32,
    flags: u32,
    pad: u32,
}

/// The tensors of one multi-tensor launch (see the module docs for the safety contract).
#[derive(Default)]
pub struct TensorTable {
    device: Option<Device>,
    descs: Vec<Desc>,
    blocks: usize,
    adamw: bool,
    /// The table on the device, once a launch has uploaded it (cleared by a push).
    uploaded: std::cell::OnceCell<Tensor>,
}

fn ptr<T: cu::CudaElement>(dev: &CudaDevice, t: &Tensor) -> Result<u64> {
    let (p, _sync) = t.cuda_slice::<T>()?.device_ptr(dev.stream());
    Ok(p)
}

impl TensorTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tensors pushed so far.
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    fn device(&mut self, t: &Tensor) -> Result<Arc<CudaDevice>> {
        let Device::Cuda(ordinal) = t.device() else {
            return Err(Error::Invalid { op: OP, msg: format!("multi-tensor launches run on CUDA, got a tensor on {}", t.device()) });
        };
        match self.device {
            Some(d) if d != t.device() => return Err(Error::DeviceMismatch { op: OP, a: d, b: t.device() }),
            _ => self.device = Some(t.device()),
        }
        cu::device(ordinal)
    }

    fn push(&mut self, mut desc: Desc) -> Result<()> {
        let blocks = blocks_for(desc.n as usize);
        if self.blocks + blocks > i32::MAX as usize || self.descs.len() >= i32::MAX as usize {
            return Err(Error::Invalid { op: OP, msg: format!("{} tensors need too many blocks", self.descs.len() + 1) });
        }
        self.uploaded = std::cell::OnceCell::new();
        desc.block_begin = self.blocks as u32;
        desc.blocks = blocks as u32;
        self.blocks += blocks;
        self.descs.push(desc);
        Ok(())
    }

    fn grad_desc(&mut self, dev: &CudaDevice, grad: &Tensor) -> Result<Desc> {
        let (grad_ptr, flags) = match grad.dtype() {
            DType::F32 => (ptr::<f32>(dev, grad)?, 0),
            DType::Bf16 => (ptr::<half::bf16>(dev, grad)?, GRAD_BF16),
            got => return Err(Error::DType { op: OP, arg: "grad", expected: DType::F32, got }),
        };
        Ok(Desc { grad: grad_ptr, n: grad.numel() as u64, flags, ..Desc::default() })
    }

    /// Adds a gradient (f32 or bf16) for [`TensorTable::global_norm`] and [`TensorTable::zero`].
    pub fn push_grad(&mut self, grad: &Tensor) -> Result<()> {
        let dev = self.device(grad)?;
        let desc = self.grad_desc(&dev, grad)?;
        self.push(desc)
    }

    /// Adds a parameter for [`TensorTable::adamw`]: its fp32 master `param`, optional bf16
    /// working copy, gradient, fp32 state `m` and `v` (all of param's shape), and whether
    /// weight decay applies to it. Such a table also serves the norm and the zeroing.
    pub fn push_adamw(&mut self, param: &Tensor, copy: Option<&Tensor>, grad: &Tensor, m: &Tensor, v: &Tensor, decays: bool) -> Result<()> {
        let dev = self.device(param)?;
        for (arg, t) in [("grad", grad), ("m", m), ("v", v)].into_iter().chain(copy.map(|c| ("copy", c))) {
            t.expect_shape(OP, arg, param.shape())?;
            self.device(t)?;
        }
        crate::ops::expect_dtype(OP, "param", param, DType::F32)?;
        crate::ops::expect_dtype(OP, "m", m, DType::F32)?;
        crate::ops::expect_dtype(OP, "v", v, DType::F32)?;
        let mut desc = self.grad_desc(&dev, grad)?;
        desc.param = ptr::<f32>(&dev, param)?;
        desc.m = ptr::<f32>(&dev, m)?;
        desc.v = ptr::<f32>(&dev, v)?;
        if let Some(c) = copy {
            crate::ops::expect_dtype(OP, "copy", c, DType::Bf16)?;
            desc.copy = ptr::<half::bf16>(&dev, c)?;
        }
        if decays {
            desc.flags |= DECAYS;
        }
        self.adamw = true;
        self.push(desc)
    }

    /// The table on the device (a pool buffer of u32 words, freed in stream order with the
    /// table), uploaded by the first launch that needs it.
    fn upload(&self, dev: &CudaDevice) -> Result<&Tensor> {
        if let Some(t) = self.uploaded.get() {
            return Ok(t);
        }
        let words: Vec<u32> = self
            .descs
            .iter()
            .flat_map(|d| {
                let mut w = Vec::with_capacity(16);
                for x in [d.param, d.copy, d.grad, d.m, d.v, d.n] {
                    w.extend([x as u32, (x >> 32) as u32]);
                }
                w.extend([d.block_begin, d.blocks, d.flags, d.pad]);
                w
            })
            .collect();
        let len = words.len();
        let table = Tensor::from_u32(&[len], words)?.to_device(dev.device())?;
        Ok(self.uploaded.get_or_init(|| table))
    }

    fn launch_cfg(&self) -> LaunchConfig {
        LaunchConfig { grid_dim: (self.blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    fn ready(&self) -> Result<Option<Arc<CudaDevice>>> {
        match self.device {
            Some(Device::Cuda(ordinal)) if !self.descs.is_empty() => Ok(Some(cu::device(ordinal)?)),
            _ => Ok(None),
        }
    }

    /// The global norm of the gradients, as a one-element f32 tensor on the device (nothing
    /// waits for it); 0 for an empty table (on the CPU, as there is no device).
    ///
    /// # Safety
    /// Every tensor pushed is alive and unmoved, and nothing writes its gradient meanwhile.
    pub unsafe fn global_norm(&self) -> Result<Tensor> {
        let Some(dev) = self.ready()? else { return Tensor::try_zeros(Device::Cpu, DType::F32, &[1]) };
        let table = self.upload(&dev)?;
        let mut partials = Tensor::try_empty(dev.device(), DType::F32, &[self.blocks])?;
        let count = self.descs.len() as i32;
        let f = dev.function("multi_tensor", "multi_norm_squares")?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(partials.cuda_slice_mut::<f32>()?).arg(table.cuda_slice::<u32>()?).arg(&count);
        // SAFETY: matches multi_tensor.cu `multi_norm_squares(float* partials, const Desc* table, int count)`;
        // the table holds `count` Descs whose blocks tile [0, self.blocks) in order, partials one
        // float per block; the pointers are valid (the caller's contract).
        unsafe { launch.launch(self.launch_cfg()) }.map_err(dev.launch_error("multi_norm_squares"))?;

        let mut norm = Tensor::try_empty(dev.device(), DType::F32, &[1])?;
        let f = dev.function("norm", "norm_finalize")?;
        let total = self.blocks as i32;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(norm.cuda_slice_mut::<f32>()?).arg(partials.cuda_slice::<f32>()?).arg(&total);
        // SAFETY: matches norm.cu `norm_finalize(float* norm, const float* partials, int count)`; norm holds 1
        // float, partials `total`; one block of 1024 threads.
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        unsafe { launch.launch(cfg) }.map_err(dev.launch_error("norm_finalize"))?;
        Ok(norm)
    }

    /// One AdamW step on every parameter pushed with [`TensorTable::push_adamw`], with the
    /// gradients scaled by min(1, max_norm / (norm + 1e-6)) (`norm` from
    /// [`TensorTable::global_norm`]) when `max_norm > 0`. `hp.weight_decay` applies to the
    /// tensors flagged for decay. The same arithmetic as [`super::adamw::adamw_update`].
    ///
    /// Returns the update's status, one f32 on the device (read it with the step's other
    /// scalars): [`UPDATE_APPLIED`]; [`UPDATE_SKIPPED`] when `norm` is not finite (NaN or
    /// infinite gradients), in which case nothing was changed; [`UPDATE_NONFINITE`] when the
    /// update made a parameter or moment NaN or infinite.
    ///
    /// # Safety
    /// Every tensor pushed is alive, unmoved and not otherwise in use; no two alias.
    pub unsafe fn adamw(&self, norm: &Tensor, max_norm: f32, hp: &AdamWStep) -> Result<Tensor> {
        let Some(dev) = self.ready()? else { return Tensor::try_zeros(Device::Cpu, DType::F32, &[1]) };
        if !self.adamw || self.descs.iter().any(|d| d.param == 0) {
            return Err(Error::Invalid { op: OP, msg: "adamw needs every tensor pushed with push_adamw".into() });
        }
        if hp.step == 0 {
            return Err(Error::Invalid { op: OP, msg: "step counts from 1".into() });
        }
        norm.expect_shape(OP, "norm", &[1])?;
        crate::ops::expect_dtype(OP, "norm", norm, DType::F32)?;
        let table = self.upload(&dev)?;
        let mut status = Tensor::try_zeros(dev.device(), DType::F32, &[1])?;
        // The step constants, computed in f32 exactly as adamw.rs does.
        let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bc2_sqrt = (1.0 - hp.beta2.powi(hp.step as i32)).sqrt();
        let step_size = hp.lr / bc1;
        let decay = 1.0 - hp.lr * hp.weight_decay;
        let (one_minus_beta1, one_minus_beta2) = (1.0 - hp.beta1, 1.0 - hp.beta2);
        let count = self.descs.len() as i32;
        let f = dev.function("multi_tensor", "multi_adamw")?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(table.cuda_slice::<u32>()?).arg(&count).arg(norm.cuda_slice::<f32>()?).arg(&max_norm);
        launch.arg(&one_minus_beta1).arg(&hp.beta2).arg(&one_minus_beta2).arg(&step_size).arg(&bc2_sqrt).arg(&hp.eps).arg(&decay);
        launch.arg(status.cuda_slice_mut::<f32>()?);
        // SAFETY: matches `multi_adamw(const Desc* table, int count, const float* norm, float max_norm,
        // float one_minus_beta1, float beta2, float one_minus_beta2, float step_size, float bc2_sqrt,
        // float eps, float decay, float* status)`; every Desc has param, m, v (and maybe copy) of n
        // elements (checked by push_adamw), valid and unaliased by the caller's contract; norm and
        // status are 1 float each.
        unsafe { launch.launch(self.launch_cfg()) }.map_err(dev.launch_error("multi_adamw"))?;
        Ok(status)
    }

    /// Zeroes every gradient in the table.
    ///
    /// # Safety
    /// Every tensor pushed is alive, unmoved and not otherwise in use.
    pub unsafe fn zero(&self) -> Result<()> {
        let Some(dev) = self.ready()? else { return Ok(()) };
        let table = self.upload(&dev)?;
        let count = self.descs.len() as i32;
        let f = dev.function("multi_tensor", "multi_zero")?;
        let mut launch = dev.stream().launch_builder(&f);
        launch.arg(table.cuda_slice::<u32>()?).arg(&count);
        // SAFETY: matches `multi_zero(const Desc* table, int count)`; every Desc's grad holds n
        // elements of the size its flag names, valid by the caller's contract.
        unsafe { launch.launch(self.launch_cfg()) }.map_err(dev.launch_error("multi_zero"))?;
        Ok(())
    }
}

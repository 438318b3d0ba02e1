use std::any::Any;
use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use half::bf16;

use crate::cuda::{self, CudaElement, CudaSlice};
use crate::memory::{self, HostBuf, HostElement};
use crate::{Device, Error, Result};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    /// bfloat16: the GPU's compute type for weights and activations (fp32 accumulation).
    Bf16,
    /// Token ids.
    U32,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::Bf16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The buffer behind a tensor, taken from its device's [`memory`] pool and given back
/// when dropped. CUDA buffers live on their device's compute stream. Invariant: every CUDA
/// slice here came from `memory::cuda_alloc` (its pool block is found again from its length).
#[derive(Debug)]
enum Storage {
    CpuF32(HostBuf<f32>),
    CpuBf16(HostBuf<bf16>),
    CpuU32(HostBuf<u32>),
    CudaF32(ManuallyDrop<CudaSlice<f32>>),
    CudaBf16(ManuallyDrop<CudaSlice<bf16>>),
    CudaU32(ManuallyDrop<CudaSlice<u32>>),
}

impl Drop for Storage {
    fn drop(&mut self) {
        // SAFETY (ManuallyDrop::take): the slice is taken once, here, and never used again.
        match self {
            Storage::CpuF32(v) => memory::host_give(std::mem::take(v)),
            Storage::CpuBf16(v) => memory::host_give(std::mem::take(v)),
            Storage::CpuU32(v) => memory::host_give(std::mem::take(v)),
            Storage::CudaF32(s) => memory::cuda_give(unsafe { ManuallyDrop::take(s) }),
            Storage::CudaBf16(s) => memory::cuda_give(unsafe { ManuallyDrop::take(s) }),
            Storage::CudaU32(s) => memory::cuda_give(unsafe { ManuallyDrop::take(s) }),
        }
    }
}

/// A host copy of `v` from the pool.
fn host_copy<T: HostElement>(v: &[T]) -> Result<HostBuf<T>> {
    let mut copy = memory::host_take(v.len())?;
    copy.copy_from_slice(v);
    Ok(copy)
}

/// A pool buffer of `n` elements on `dev`, contents unspecified.
fn cuda_empty<T: CudaElement>(dev: &cuda::CudaDevice, n: usize) -> Result<ManuallyDrop<CudaSlice<T>>> {
    Ok(ManuallyDrop::new(memory::cuda_alloc(dev, n)?))
}

/// A pool buffer on `dev` holding a copy of `data`.
fn cuda_from_host<T: CudaElement>(dev: &cuda::CudaDevice, data: &[T]) -> Result<ManuallyDrop<CudaSlice<T>>> {
    let mut s = cuda_empty(dev, data.len())?;
    let op = || format!("copying {} x {} to the GPU", data.len(), T::NAME);
    dev.stream().memcpy_htod(data, &mut *s).map_err(|e| Error::Cuda { op: op(), msg: e.to_string() })?;
    Ok(s)
}

/// A device-to-device copy of `src` into a pool buffer (on the compute stream).
fn cuda_clone<T: CudaElement>(src: &CudaSlice<T>) -> Result<ManuallyDrop<CudaSlice<T>>> {
    let dev = cuda::device(src.ordinal())?;
    let mut s = cuda_empty(&dev, src.len())?;
    let err = |e: cuda::DriverError| Error::Cuda { op: "copying a shared tensor before a write".into(), msg: e.to_string() };
    dev.stream().memcpy_dtod(src, &mut *s).map_err(err)?;
    Ok(s)
}

/// Elements `a..b` of `src` copied device to device into a pool buffer (compute stream).
fn cuda_rows<T: CudaElement>(src: &CudaSlice<T>, a: usize, b: usize) -> Result<ManuallyDrop<CudaSlice<T>>> {
    let dev = cuda::device(src.ordinal())?;
    let mut s = cuda_empty(&dev, b - a)?;
    let err = |e: cuda::DriverError| Error::Cuda { op: "copying tensor rows".into(), msg: e.to_string() };
    dev.stream().memcpy_dtod(&src.slice(a..b), &mut *s).map_err(err)?;
    Ok(s)
}

impl Storage {
    /// A deep copy from the pool; fails (rather than panicking, as `CudaSlice::clone`
    /// would) past the budget or when the device cannot allocate.
    fn try_clone(&self) -> Result<Self> {
        Ok(match self {
            Storage::CpuF32(v) => Storage::CpuF32(host_copy(v)?),
            Storage::CpuBf16(v) => Storage::CpuBf16(host_copy(v)?),
            Storage::CpuU32(v) => Storage::CpuU32(host_copy(v)?),
            Storage::CudaF32(s) => Storage::CudaF32(cuda_clone(s)?),
            Storage::CudaBf16(s) => Storage::CudaBf16(cuda_clone(s)?),
            Storage::CudaU32(s) => Storage::CudaU32(cuda_clone(s)?),
        })
    }

    fn cuda_any(&self) -> Option<&dyn Any> {
        match self {
            Storage::CudaF32(s) => Some(&**s),
            Storage::CudaBf16(s) => Some(&**s),
            Storage::CudaU32(s) => Some(&**s),
            _ => None,
        }
    }

    fn cuda_any_mut(&mut self) -> Option<&mut dyn Any> {
        match self {
            Storage::CudaF32(s) => Some(&mut **s),
            Storage::CudaBf16(s) => Some(&mut **s),
            Storage::CudaU32(s) => Some(&mut **s),
            _ => None,
        }
    }
}

/// A typed, contiguous, row-major buffer with a shape, on one device.
///
/// Cloning is cheap (the storage is shared); a write through [`Tensor::f32_mut`] (or
/// [`Tensor::cuda_slice_mut`] on the GPU) copies shared storage first, so a layer may keep
/// its input for backward while the caller goes on using it.
///
/// ```
/// use kernels::{DType, Device, Tensor};
///
/// let x = Tensor::from_vec(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// assert_eq!((x.shape(), x.dtype(), x.device()), (&[2, 3][..], DType::F32, Device::Cpu));
/// let kept = x.clone(); // shares the storage
/// let mut y = x.reshape(&[3, 2])?;
/// y.f32_mut()?[0] = -1.0; // copy-on-write: `kept` still reads 1.0
/// assert_eq!((kept.to_vec()[0], y.to_vec()[0]), (1.0, -1.0));
/// assert_eq!(x.rows(1, 1)?.to_vec(), [4.0, 5.0, 6.0]);
/// // On a GPU: `x.to_device(Device::Cuda(0))?`, then ops run there; `try_to_vec` reads back.
/// # Ok::<(), kernels::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

impl Tensor {
    /// An f32 tensor of zeros. On a GPU this allocates device memory and panics if that
    /// fails; code that can run on a GPU should prefer [`Tensor::try_zeros`].
    pub fn zeros(device: Device, shape: &[usize]) -> Self {
        Self::try_zeros(device, DType::F32, shape)
            .unwrap_or_else(|e| panic!("Tensor::zeros({device}, {shape:?}) failed: {e}"))
    }

    /// A tensor whose contents are unspecified, for an op to overwrite entirely: a cached
    /// block from the device's [`memory`] pool (no clearing, no page faults), on the GPU
    /// too. Under [`memory::set_poison`] float buffers start as NaN. Fails with
    /// `OutOfMemory` past the pool's budget.
    pub fn try_empty(device: Device, dtype: DType, shape: &[usize]) -> Result<Self> {
        let n = shape.iter().product();
        let storage = match (device, dtype) {
            (Device::Cpu, DType::F32) => Storage::CpuF32(memory::host_take(n)?),
            (Device::Cpu, DType::Bf16) => Storage::CpuBf16(memory::host_take(n)?),
            (Device::Cpu, DType::U32) => Storage::CpuU32(memory::host_take(n)?),
            (Device::Cuda(ordinal), dtype) => {
                let dev = cuda::device(ordinal)?;
                let poison = memory::poison();
                match dtype {
                    DType::F32 => {
                        let mut s = cuda_empty::<f32>(&dev, n)?;
                        if poison {
                            crate::ops::fill::gpu::fill(&dev, &mut s, f32::NAN)?;
                        }
                        Storage::CudaF32(s)
                    }
                    DType::Bf16 => {
                        let mut s = cuda_empty::<bf16>(&dev, n)?;
                        if poison {
                            crate::ops::fill::gpu::fill(&dev, &mut s, f32::NAN)?;
                        }
                        Storage::CudaBf16(s)
                    }
                    DType::U32 => Storage::CudaU32(cuda_empty(&dev, n)?),
                }
            }
        };
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(storage) })
    }

    /// A tensor of zeros of any dtype on any device (a pool block, cleared).
    pub fn try_zeros(device: Device, dtype: DType, shape: &[usize]) -> Result<Self> {
        let n = shape.iter().product();
        let storage = match (device, dtype) {
            (Device::Cpu, DType::F32) => Storage::CpuF32(zeroed(memory::host_take(n)?)),
            (Device::Cpu, DType::Bf16) => Storage::CpuBf16(zeroed(memory::host_take(n)?)),
            (Device::Cpu, DType::U32) => Storage::CpuU32(zeroed(memory::host_take(n)?)),
            (Device::Cuda(ordinal), dtype) => {
                let dev = cuda::device(ordinal)?;
                match dtype {
                    DType::F32 => Storage::CudaF32(cuda_zeros(&dev, n)?),
                    DType::Bf16 => Storage::CudaBf16(cuda_zeros(&dev, n)?),
                    DType::U32 => Storage::CudaU32(cuda_zeros(&dev, n)?),
                }
            }
        };
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(storage) })
    }

    /// An f32 tensor on the CPU (the buffer is counted by the CPU pool, so this fails past
    /// its budget). Errors if `data.len()` is not the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        check_len("Tensor::from_vec", shape, data.len())?;
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(Storage::CpuF32(memory::host_adopt(data)?)) })
    }

    /// A bf16 tensor on the CPU (a host staging buffer; the CPU ops compute in f32).
    pub fn from_bf16(shape: &[usize], data: Vec<bf16>) -> Result<Self> {
        check_len("Tensor::from_bf16", shape, data.len())?;
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(Storage::CpuBf16(memory::host_adopt(data)?)) })
    }

    /// A u32 (token id) tensor on the CPU.
    pub fn from_u32(shape: &[usize], data: Vec<u32>) -> Result<Self> {
        check_len("Tensor::from_u32", shape, data.len())?;
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(Storage::CpuU32(memory::host_adopt(data)?)) })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::CpuF32(_) | Storage::CudaF32(_) => DType::F32,
            Storage::CpuBf16(_) | Storage::CudaBf16(_) => DType::Bf16,
            Storage::CpuU32(_) | Storage::CudaU32(_) => DType::U32,
        }
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::CpuF32(_) | Storage::CpuBf16(_) | Storage::CpuU32(_) => Device::Cpu,
            Storage::CudaF32(s) => Device::Cuda(s.ordinal()),
            Storage::CudaBf16(s) => Device::Cuda(s.ordinal()),
            Storage::CudaU32(s) => Device::Cuda(s.ordinal()),
        }
    }

    /// Same data, new shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::Shape {
                op: "reshape",
                arg: "shape",
                expected: self.shape.clone(),
                got: shape.to_vec(),
            });
        }
        Ok(Self { shape: shape.to_vec(), storage: self.storage.clone() })
    }

    /// The same data on `device`, same dtype. A tensor already there is returned as a
    /// clone (shared storage). Copies to and from a GPU go through its compute stream and
    /// the copy to the host waits for it.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        if device == self.device() {
            return Ok(self.clone());
        }
        // From a GPU: to the host first (waits for the compute stream), then on from there.
        let host = match &*self.storage {
            Storage::CudaF32(s) => Some(Self::host(&self.shape, Storage::CpuF32(memory::host_adopt(cuda::device(s.ordinal())?.dtoh(s)?)?))),
            Storage::CudaBf16(s) => Some(Self::host(&self.shape, Storage::CpuBf16(memory::host_adopt(cuda::device(s.ordinal())?.dtoh(s)?)?))),
            Storage::CudaU32(s) => Some(Self::host(&self.shape, Storage::CpuU32(memory::host_adopt(cuda::device(s.ordinal())?.dtoh(s)?)?))),
            _ => None,
        };
        if let Some(host) = host {
            return host.to_device(device);
        }
        let Device::Cuda(ordinal) = device else { unreachable!("a CPU tensor asked for the CPU returned above") };
        let dev = cuda::device(ordinal)?;
        let storage = match &*self.storage {
            Storage::CpuF32(v) => Storage::CudaF32(cuda_from_host(&dev, v)?),
            Storage::CpuBf16(v) => Storage::CudaBf16(cuda_from_host(&dev, v)?),
            Storage::CpuU32(v) => Storage::CudaU32(cuda_from_host(&dev, v)?),
            _ => unreachable!("GPU storage handled above"),
        };
        Ok(Self { shape: self.shape.clone(), storage: Arc::new(storage) })
    }

    /// A copy of rows `start .. start + count` along the first dimension, on the same device
    /// (a fresh pool buffer; on a GPU a device-to-device copy on the compute stream). The
    /// trainer cuts a step's batch into micro-batches with it.
    pub fn rows(&self, start: usize, count: usize) -> Result<Self> {
        let total = self.shape.first().copied().unwrap_or(0);
        if count == 0 || start + count > total {
            return Err(Error::Invalid {
                op: "Tensor::rows",
                msg: format!("rows {start}..{} are outside a tensor of shape {:?}", start + count, self.shape),
            });
        }
        let row: usize = self.shape[1..].iter().product();
        let (a, b) = (start * row, (start + count) * row);
        let storage = match &*self.storage {
            Storage::CpuF32(v) => Storage::CpuF32(host_copy(&v[a..b])?),
            Storage::CpuBf16(v) => Storage::CpuBf16(host_copy(&v[a..b])?),
            Storage::CpuU32(v) => Storage::CpuU32(host_copy(&v[a..b])?),
            Storage::CudaF32(s) => Storage::CudaF32(cuda_rows(s, a, b)?),
            Storage::CudaBf16(s) => Storage::CudaBf16(cuda_rows(s, a, b)?),
            Storage::CudaU32(s) => Storage::CudaU32(cuda_rows(s, a, b)?),
        };
        let mut shape = self.shape.clone();
        shape[0] = count;
        Ok(Self { shape, storage: Arc::new(storage) })
    }

    fn host(shape: &[usize], storage: Storage) -> Self {
        Self { shape: shape.to_vec(), storage: Arc::new(storage) }
    }

    /// The same values as `dtype`, on the same device (`ops::cast`; a clone if already `dtype`).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let mut out = Self::try_zeros(self.device(), dtype, &self.shape)?;
        crate::ops::cast::cast(&mut out, self)?;
        Ok(out)
    }

    /// The same data on the CPU (a clone when it is already there).
    pub fn to_host(&self) -> Result<Self> {
        self.to_device(Device::Cpu)
    }

    /// A copy of the data on the host, as f32, from any device and dtype. Panics if a GPU
    /// copy fails; use [`Tensor::try_to_vec`] where that must be an error.
    pub fn to_vec(&self) -> Vec<f32> {
        self.try_to_vec().unwrap_or_else(|e| panic!("Tensor::to_vec: {e}"))
    }

    /// A copy of the data on the host, as f32 (bf16 widened exactly, u32 converted).
    pub fn try_to_vec(&self) -> Result<Vec<f32>> {
        Ok(match &*self.storage {
            Storage::CpuF32(v) => v.to_vec(),
            Storage::CpuBf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::CpuU32(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::CudaF32(_) | Storage::CudaBf16(_) | Storage::CudaU32(_) => return self.to_host()?.try_to_vec(),
        })
    }

    /// The values of many one-element f32 tensors (a step's loss and gradient norm, ...), in
    /// order. On a GPU they are gathered on the device first (asynchronous device-to-device
    /// copies), so reading any number of them waits for the device once.
    pub fn read_scalars(scalars: &[&Tensor]) -> Result<Vec<f32>> {
        let op = "read_scalars";
        for t in scalars {
            t.expect_shape(op, "scalar", &[1])?;
            crate::ops::expect_dtype(op, "scalar", t, DType::F32)?;
        }
        let Some(first) = scalars.iter().find(|t| t.device() != Device::Cpu) else {
            return scalars.iter().map(|t| Ok(t.f32()?[0])).collect();
        };
        let device = first.device();
        let Device::Cuda(ordinal) = device else { unreachable!("not the CPU") };
        let dev = cuda::device(ordinal)?;
        let mut gathered = Tensor::try_empty(device, DType::F32, &[scalars.len()])?;
        let mut host = vec![0.0f32; scalars.len()];
        {
            let dst = gathered.cuda_slice_mut::<f32>()?;
            for (i, t) in scalars.iter().enumerate() {
                match t.device() {
                    Device::Cpu => host[i] = t.f32()?[0],
                    d if d == device => {
                        let err = dev.error("gathering scalars on the device");
                        dev.stream().memcpy_dtod(t.cuda_slice::<f32>()?, &mut dst.slice_mut(i..i + 1)).map_err(err)?;
                    }
                    d => return Err(Error::DeviceMismatch { op, a: device, b: d }),
                }
            }
        }
        let values = gathered.try_to_vec()?;
        Ok(scalars.iter().enumerate().map(|(i, t)| if t.device() == Device::Cpu { host[i] } else { values[i] }).collect())
    }

    /// Host view of an f32 CPU tensor.
    pub fn f32(&self) -> Result<&[f32]> {
        match &*self.storage {
            Storage::CpuF32(v) => Ok(v),
            _ => Err(self.view_error("f32", DType::F32)),
        }
    }

    /// Mutable host view of an f32 CPU tensor (copies the storage first if it is shared).
    pub fn f32_mut(&mut self) -> Result<&mut [f32]> {
        if self.dtype() != DType::F32 || self.device() != Device::Cpu {
            return Err(self.view_error("f32_mut", DType::F32));
        }
        match self.storage_mut()? {
            Storage::CpuF32(v) => Ok(v),
            _ => unreachable!("dtype and device checked above"),
        }
    }

    /// Host view of a bf16 CPU tensor.
    pub fn bf16(&self) -> Result<&[bf16]> {
        match &*self.storage {
            Storage::CpuBf16(v) => Ok(v),
            _ => Err(self.view_error("bf16", DType::Bf16)),
        }
    }

    /// Mutable host view of a bf16 CPU tensor (copies the storage first if it is shared).
    pub fn bf16_mut(&mut self) -> Result<&mut [bf16]> {
        if self.dtype() != DType::Bf16 || self.device() != Device::Cpu {
            return Err(self.view_error("bf16_mut", DType::Bf16));
        }
        match self.storage_mut()? {
            Storage::CpuBf16(v) => Ok(v),
            _ => unreachable!("dtype and device checked above"),
        }
    }

    /// Host view of a u32 CPU tensor.
    pub fn u32(&self) -> Result<&[u32]> {
        match &*self.storage {
            Storage::CpuU32(v) => Ok(v),
            _ => Err(self.view_error("u32", DType::U32)),
        }
    }

    /// The device buffer of a GPU tensor whose dtype is `T` (what a launcher passes as an
    /// input argument).
    pub fn cuda_slice<T: CudaElement>(&self) -> Result<&CudaSlice<T>> {
        let err = self.view_error("cuda_slice", T::DTYPE);
        self.storage.cuda_any().and_then(|s| s.downcast_ref::<CudaSlice<T>>()).ok_or(err)
    }

    /// The device buffer of a GPU tensor whose dtype is `T`, for writing (what a launcher
    /// passes as an output). Copies the storage first (device to device) if it is shared.
    pub fn cuda_slice_mut<T: CudaElement>(&mut self) -> Result<&mut CudaSlice<T>> {
        let err = self.view_error("cuda_slice_mut", T::DTYPE);
        if self.dtype() != T::DTYPE || !matches!(self.device(), Device::Cuda(_)) {
            return Err(err);
        }
        self.storage_mut()?.cuda_any_mut().and_then(|s| s.downcast_mut::<CudaSlice<T>>()).ok_or(err)
    }

    /// Unique access to the storage: copies it first if another tensor shares it.
    fn storage_mut(&mut self) -> Result<&mut Storage> {
        if Arc::get_mut(&mut self.storage).is_none() {
            self.storage = Arc::new(self.storage.try_clone()?);
        }
        Ok(Arc::get_mut(&mut self.storage).expect("unique: just copied"))
    }

    /// The error for asking a tensor for a view it cannot give (wrong dtype or device).
    fn view_error(&self, op: &'static str, expected: DType) -> Error {
        if self.dtype() != expected {
            Error::DType { op, arg: "self", expected, got: self.dtype() }
        } else {
            let wanted = if op.starts_with("cuda") { "a CUDA tensor" } else { "a CPU tensor" };
            Error::Invalid { op, msg: format!("needs {wanted}, this one is on {}", self.device()) }
        }
    }

    /// Sets every element to zero (gradient reset), on any device.
    pub fn fill_zero(&mut self) -> Result<()> {
        match self.storage_mut()? {
            Storage::CpuF32(v) => v.fill(0.0),
            Storage::CpuBf16(v) => v.fill(bf16::ZERO),
            Storage::CpuU32(v) => v.fill(0),
            Storage::CudaF32(s) => memset_zeros(s)?,
            Storage::CudaBf16(s) => memset_zeros(s)?,
            Storage::CudaU32(s) => memset_zeros(s)?,
        }
        Ok(())
    }

    /// Errors unless the tensor has exactly `expected` as its shape.
    pub fn expect_shape(&self, op: &'static str, arg: &'static str, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(Error::Shape { op, arg, expected: expected.to_vec(), got: self.shape.clone() });
        }
        Ok(())
    }
}

/// `buf` with every element zero.
fn zeroed<T: HostElement>(mut buf: HostBuf<T>) -> HostBuf<T> {
    buf.fill(T::default());
    buf
}

/// A cleared pool buffer of `n` elements on `dev`.
fn cuda_zeros<T: CudaElement>(dev: &cuda::CudaDevice, n: usize) -> Result<ManuallyDrop<CudaSlice<T>>> {
    let mut s = cuda_empty(dev, n)?;
    memset_zeros(&mut s)?;
    Ok(s)
}

fn memset_zeros<T: CudaElement>(s: &mut CudaSlice<T>) -> Result<()> {
    let stream = s.stream().clone();
    stream.memset_zeros(s).map_err(|e| Error::Cuda { op: "fill_zero".into(), msg: e.to_string() })
}

fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(Error::Invalid {
            op,
            msg: format!("shape {shape:?} holds {n} elements but the data has {len}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_written() {
        let a = Tensor::from_vec(&[3], vec![1.0, 2.0, 3.0]).unwrap();
        let mut b = a.clone();
        b.f32_mut().unwrap()[0] = 9.0;
        assert_eq!(a.to_vec(), [1.0, 2.0, 3.0]);
        assert_eq!(b.to_vec(), [9.0, 2.0, 3.0]);
    }

    #[test]
    fn bf16_host_tensors() {
        let t = Tensor::from_bf16(&[2], vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)]).unwrap();
        assert_eq!(t.dtype(), DType::Bf16);
        assert_eq!(t.to_vec(), [1.5, -2.0]);
        assert!(matches!(t.f32(), Err(Error::DType { expected: DType::F32, got: DType::Bf16, .. })));
        let z = Tensor::try_zeros(Device::Cpu, DType::Bf16, &[2, 2]).unwrap();
        assert_eq!(z.to_vec(), [0.0; 4]);
    }

    #[test]
    fn rows_copies_a_range_of_the_first_dimension() {
        let t = Tensor::from_u32(&[4, 3], (0..12).collect()).unwrap();
        let r = t.rows(1, 2).unwrap();
        assert_eq!(r.shape(), [2, 3]);
        assert_eq!(r.u32().unwrap(), [3, 4, 5, 6, 7, 8]);
        assert_eq!(t.rows(3, 1).unwrap().u32().unwrap(), [9, 10, 11]);
        for (start, count) in [(3, 2), (0, 0), (5, 1)] {
            let msg = t.rows(start, count).unwrap_err().to_string();
            assert!(msg.contains("outside a tensor of shape [4, 3]"), "{msg}");
        }
        let f = Tensor::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(f.rows(1, 1).unwrap().to_vec(), [3.0, 4.0]);
    }

    #[test]
    fn cpu_tensor_has_no_cuda_slice() {
        let t = Tensor::zeros(Device::Cpu, &[4]);
        let msg = t.cuda_slice::<f32>().unwrap_err().to_string();
        assert!(msg.contains("needs a CUDA tensor, this one is on cpu"), "{msg}");
        assert_eq!(t.to_device(Device::Cpu).unwrap().to_vec(), [0.0; 4]);
    }
}

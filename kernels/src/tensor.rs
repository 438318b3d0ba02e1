use std::fmt;
use std::sync::Arc;

use crate::{Device, Error, Result};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Token ids.
    U32,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Clone, Debug)]
enum Storage {
    CpuF32(Vec<f32>),
    CpuU32(Vec<u32>),
}

/// A typed, contiguous, row-major buffer with a shape, on one device.
///
/// Cloning is cheap (the storage is shared); a write through [`Tensor::f32_mut`] copies
/// shared storage first, so a layer may keep its input for backward while the caller
/// goes on using it.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

impl Tensor {
    pub fn zeros(device: Device, shape: &[usize]) -> Self {
        match device {
            Device::Cpu => Self::from_vec(shape, vec![0.0; shape.iter().product()])
                .expect("length matches shape by construction"),
        }
    }

    /// An f32 tensor on the CPU. Errors if `data.len()` is not the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        check_len("Tensor::from_vec", shape, data.len())?;
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(Storage::CpuF32(data)) })
    }

    /// A u32 (token id) tensor on the CPU.
    pub fn from_u32(shape: &[usize], data: Vec<u32>) -> Result<Self> {
        check_len("Tensor::from_u32", shape, data.len())?;
        Ok(Self { shape: shape.to_vec(), storage: Arc::new(Storage::CpuU32(data)) })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::CpuF32(_) => DType::F32,
            Storage::CpuU32(_) => DType::U32,
        }
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::CpuF32(_) | Storage::CpuU32(_) => Device::Cpu,
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

    /// A copy of the data on the host, as f32.
    pub fn to_vec(&self) -> Vec<f32> {
        match &*self.storage {
            Storage::CpuF32(v) => v.clone(),
            Storage::CpuU32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Host view of an f32 CPU tensor.
    pub fn f32(&self) -> Result<&[f32]> {
        match &*self.storage {
            Storage::CpuF32(v) => Ok(v),
            _ => Err(self.dtype_error("f32", DType::F32)),
        }
    }

    /// Mutable host view of an f32 CPU tensor (copies the storage first if it is shared).
    pub fn f32_mut(&mut self) -> Result<&mut [f32]> {
        if self.dtype() != DType::F32 {
            return Err(self.dtype_error("f32_mut", DType::F32));
        }
        match Arc::make_mut(&mut self.storage) {
            Storage::CpuF32(v) => Ok(v),
            _ => unreachable!("dtype checked above"),
        }
    }

    /// Host view of a u32 CPU tensor.
    pub fn u32(&self) -> Result<&[u32]> {
        match &*self.storage {
            Storage::CpuU32(v) => Ok(v),
            _ => Err(self.dtype_error("u32", DType::U32)),
        }
    }

    fn dtype_error(&self, op: &'static str, expected: DType) -> Error {
        Error::DType { op, arg: "self", expected, got: self.dtype() }
    }

    /// Sets every element to zero (gradient reset).
    pub fn fill_zero(&mut self) -> Result<()> {
        self.f32_mut()?.fill(0.0);
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

//! Kernel modules from outside the crate: a user op hands in its CUDA C source and the names
//! of its kernels, and from then on `CudaDevice::function(module, kernel)` finds them exactly
//! as it finds the built-in `kernels/cuda/*.cu`: compiled by NVRTC with the same options
//! and headers (`#include "common.cuh"` works), stored in and loaded from the same disk
//! cache under the same kind of key (module name, source, headers, options, arch), launched
//! on the same stream with the same helpers (`grid_stride`, `launch_builder`, `launch_error`).
//!
//! The registry is process-wide, so one registration serves every device. A module name is
//! `[A-Za-z0-9_]+` (it names the cache file and the `<module>.cu` of compile errors) and may
//! not be a built-in's; registering the same module again with the same source and kernels
//! does nothing, with anything different it is an error (devices may have loaded the first).
//! The declared kernels are the only ones `function` hands out for the module.
//!
//! The launch table and resource check (`launches.rs`, `resources.rs`, `engine kernels
//! resources`) cover the built-in kernels only; a registered module is not listed there.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::{Error, Result};

const OP: &str = "cuda::register_module";

/// One registered module.
#[derive(Clone, Debug)]
pub(super) struct Registered {
    pub source: Arc<str>,
    pub kernels: Vec<String>,
}

static REGISTRY: OnceLock<Mutex<BTreeMap<String, Registered>>> = OnceLock::new();

fn registry() -> std::sync::MutexGuard<'static, BTreeMap<String, Registered>> {
    super::lock(REGISTRY.get_or_init(|| Mutex::new(BTreeMap::new())))
}

/// The registered module `module`, if there is one.
pub(super) fn get(module: &str) -> Option<Registered> {
    registry().get(module).cloned()
}

/// `(name, source)` of every registered module, by name.
pub(super) fn all() -> Vec<(String, Arc<str>)> {
    registry().iter().map(|(name, m)| (name.clone(), m.source.clone())).collect()
}

/// Registers `module` (see the module docs) without compiling it: the first
/// `CudaDevice::function` on a device compiles it, and [`super::compile_module`] compiles it
/// for an architecture with no GPU. `CudaDevice::register_module` registers and compiles now.
pub fn register_module(module: &str, source: &str, kernels: &[&str]) -> Result<()> {
    let mut registry = registry();
    if !check_in(&registry, module, source, kernels)? {
        let entry = Registered { source: Arc::from(source), kernels: kernels.iter().map(|k| k.to_string()).collect() };
        registry.insert(module.to_string(), entry);
    }
    Ok(())
}

/// Validates a registration; `Ok(true)` when `module` is already registered exactly so.
pub(super) fn check(module: &str, source: &str, kernels: &[&str]) -> Result<bool> {
    check_in(&registry(), module, source, kernels)
}

fn check_in(registry: &BTreeMap<String, Registered>, module: &str, source: &str, kernels: &[&str]) -> Result<bool> {
    let invalid = |msg: String| Error::Invalid { op: OP, msg };
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !word(module) {
        return Err(invalid(format!("module name {module:?} must be letters, digits and `_` (it names the cache file and {module}.cu in errors)")));
    }
    if super::source(module).is_some() {
        return Err(invalid(format!("module name `{module}` is taken by the built-in kernels/cuda/{module}.cu; pick another name")));
    }
    if kernels.is_empty() {
        return Err(invalid(format!("module `{module}` declares no kernels (name its extern \"C\" __global__ functions)")));
    }
    for (i, kernel) in kernels.iter().enumerate() {
        if !word(kernel) || kernel.as_bytes()[0].is_ascii_digit() {
            return Err(invalid(format!("module `{module}`: kernel name {kernel:?} is not a C identifier")));
        }
        if kernels[..i].contains(kernel) {
            return Err(invalid(format!("module `{module}`: kernel `{kernel}` is declared twice")));
        }
    }
    match registry.get(module) {
        None => Ok(false),
        Some(m) if &*m.source == source && m.kernels.iter().eq(kernels.iter()) => Ok(true),
        Some(m) => Err(invalid(format!(
            "module `{module}` is already registered with a different {} (kernels: {}); register each module once, or under a new name",
            if &*m.source == source { "list of kernels" } else { "source" },
            m.kernels.join(", ")
        ))),
    }
}

/// The error for `kernel` not among the declared kernels of `module`.
pub(super) fn undeclared(module: &str, kernel: &str, declared: &[String]) -> Error {
    Error::Invalid {
        op: "cuda::function",
        msg: format!("kernel `{kernel}` is not declared by the registered module `{module}` (declared: {})", declared.join(", ")),
    }
}

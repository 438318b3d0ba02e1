//! The CPU pool end to end through tensors: its own test binary (one test), so the global
//! CPU pool's budget and counts here are this test's alone.

use kernels::memory::{self, size_class};
use kernels::{DType, Device, Error, Tensor};

#[test]
fn tensors_are_counted_cached_and_refused_past_the_budget() {
    let cpu = Device::Cpu;
    memory::empty_cache(cpu);
    let base = memory::stats(cpu);
    assert_eq!(base.in_use, 0, "nothing else allocates in this binary");

    // counting: a tensor charges its size class; dropping it moves the block to the cache
    let n = 300_000; // 1.2 MB of f32 -> a 1.25 MiB class
    let class = size_class(n * 4);
    let a = Tensor::try_empty(cpu, DType::F32, &[n]).unwrap();
    let s = memory::stats(cpu);
    assert_eq!((s.in_use, s.cached, s.misses - base.misses), (class, 0, 1));
    drop(a);
    let s = memory::stats(cpu);
    assert_eq!((s.in_use, s.cached, s.reserved), (0, class, class));

    // reuse: the same class comes from the cache, cleared by try_zeros
    let before = memory::stats(cpu);
    let z = Tensor::try_zeros(cpu, DType::F32, &[n - 7]).unwrap();
    let s = memory::stats(cpu);
    assert_eq!((s.hits - before.hits, s.misses - before.misses, s.cached), (1, 0, 0));
    assert!(z.to_vec().iter().all(|&x| x == 0.0));

    // peak and reset_peak
    memory::reset_peak(cpu);
    assert_eq!(memory::peak(cpu), class);
    let b = Tensor::try_empty(cpu, DType::Bf16, &[1000]).unwrap();
    assert_eq!(memory::peak(cpu), class + size_class(2000));
    drop(b);
    memory::reset_peak(cpu);
    assert_eq!(memory::peak(cpu), memory::in_use(cpu));

    // the budget: a request past it fails with the numbers, in use unchanged
    let budget = 2 * class;
    memory::set_budget(cpu, Some(budget));
    let in_use = memory::in_use(cpu);
    let err = Tensor::try_empty(cpu, DType::F32, &[2 * n]).unwrap_err();
    let big = size_class(2 * n * 4);
    match &err {
        Error::OutOfMemory { device, requested, in_use: u, budget: b, largest_free } => {
            assert_eq!((*device, *requested, *u, *b, *largest_free), (cpu, big, in_use, Some(budget), budget - in_use));
        }
        other => panic!("expected OutOfMemory, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with("out of memory on cpu: requested 2.50 MiB, in use 1.25 MiB, budget 2.50 MiB, largest free 1.25 MiB"), "{msg}");
    assert_eq!(memory::in_use(cpu), in_use);
    // buffers made outside the pool count too
    assert!(matches!(Tensor::from_vec(&[2 * n], vec![1.0; 2 * n]), Err(Error::OutOfMemory { .. })));
    // a copy on write of a shared tensor is an allocation like any other
    let fits = Tensor::from_vec(&[1000], vec![2.0; 1000]).unwrap();
    let mut shared = fits.clone();
    shared.f32_mut().unwrap()[0] = 3.0;
    assert_eq!((fits.to_vec()[0], shared.to_vec()[0]), (2.0, 3.0));
    drop((fits, shared, z));
    assert_eq!(memory::in_use(cpu), 0);
    let s = memory::stats(cpu);
    assert!(s.reserved <= budget, "{s}");

    // lifting the budget lets the same request through
    memory::set_budget(cpu, None);
    assert!(Tensor::try_empty(cpu, DType::F32, &[2 * n]).is_ok());
    memory::empty_cache(cpu);
    assert_eq!(memory::stats(cpu).reserved, 0);
}

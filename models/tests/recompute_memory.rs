//! Recomputation saves memory: the activation peak of one forward + backward (bytes live in
//! the CPU memory pool above what the parameters and gradients hold), measured with the
//! pool's statistics, per policy on a 12-layer model. Its own test binary: the pool is per
//! device and process-wide, so no other test may allocate while this one measures.

use kernels::{memory, Device, Tensor};
use models::{Gpt, GptConfig, Model};

/// (activation peak, bytes still held after backward beyond the baseline).
fn activation_peak(model: &mut Gpt, x: &Tensor, y: &Tensor) -> (usize, isize) {
    let base = memory::in_use(Device::Cpu);
    memory::reset_peak(Device::Cpu);
    model.forward(x, Some(y)).unwrap();
    model.backward(1.0).unwrap();
    let peak = memory::peak(Device::Cpu) - base;
    (peak, memory::in_use(Device::Cpu) as isize - base as isize)
}

#[test]
fn full_recomputation_needs_at_most_a_quarter_of_the_activation_memory() {
    let config = GptConfig { vocab_size: 64, context_length: 64, n_layer: 12, n_head: 4, n_embd: 64, ..GptConfig::default() };
    let mut model = Gpt::new(config, Device::Cpu, 3).unwrap();
    let mut rng = fastrand::Rng::with_seed(9);
    let (b, t) = (4, 64);
    let x = Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..64)).collect()).unwrap();
    let y = Tensor::from_u32(&[b, t], (0..b * t).map(|_| rng.u32(0..64)).collect()).unwrap();
    let mut peaks = Vec::new();
    for policy in ["none", "selective", "full:4", "full:2", "full", "none"] {
        model.set_recompute(policy.parse().unwrap());
        let (peak, left) = activation_peak(&mut model, &x, &y);
        eprintln!("{policy:>9}: activation peak {}", memory::fmt_bytes(peak));
        assert_eq!(left, 0, "{policy}: {left} bytes of saved state outlive backward");
        peaks.push((policy, peak));
    }
    let peak = |name: &str| peaks.iter().find(|(p, _)| *p == name).unwrap().1;
    assert_eq!(peaks[0].1, peaks[5].1, "the same policy twice measures the same peak");
    let none = peak("none");
    assert!(peak("selective") < none, "selective {} vs none {none}", peak("selective"));
    // Fewer blocks kept whole, less memory.
    assert!(peak("full:4") < none && peak("full:2") < peak("full:4") && peak("full") < peak("full:2"), "{peaks:?}");
    assert!(4 * peak("full") <= none, "full {} is more than a quarter of none's {none}", peak("full"));
}

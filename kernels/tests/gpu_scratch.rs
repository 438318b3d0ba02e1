//! Launcher scratch comes from the device pool: it shows in the pool's peak while the op
//! runs, is reused by the next call, and is refused past the budget with `OutOfMemory`
//! rather than allocated outside it. Its own test binary (one test), so the GPU pool's
//! counts here are this test's alone.

mod common;

use common::{assert_close, gpu_or_skip, random};
use kernels::memory::{self, size_class};
use kernels::ops::embedding::embedding_backward;
use kernels::ops::layernorm::{layernorm_backward, layernorm_forward};
use kernels::{DType, Device, Error, Tensor};

/// Runs `op` and returns the bytes the pool's peak rose above what was live before it.
fn scratch_peak(gpu: Device, op: impl FnOnce()) -> usize {
    memory::reset_peak(gpu);
    let before = memory::in_use(gpu);
    op();
    assert_eq!(memory::in_use(gpu), before, "the scratch went back to the pool");
    memory::peak(gpu) - before
}

fn expect_oom(err: Error, gpu: Device, requested: usize, in_use: usize, budget: usize) {
    match err {
        Error::OutOfMemory { device, requested: r, in_use: u, budget: b, .. } => {
            assert_eq!((device, r, u, b), (gpu, requested, in_use, Some(budget)));
        }
        other => panic!("expected OutOfMemory for the scratch, got {other}"),
    }
}

#[test]
fn launcher_scratch_is_pooled_and_inside_the_budget() {
    let Some(dev) = gpu_or_skip() else { return };
    let gpu = dev.device();

    // layernorm_backward: per-block partials, 2C floats per 32 rows (the launcher's BWD_ROWS)
    let (n, c) = (96usize, 80usize);
    let partials = size_class(n.div_ceil(32) * 2 * c * 4);
    let inp_c = random(&[n, c], 1, 1.0);
    let weight_c = random(&[c], 2, 1.0);
    let bias_c = random(&[c], 3, 1.0);
    let dout_c = random(&[n, c], 4, 1.0);
    let (mut out_c, mut mean_c, mut rstd_c) = (Tensor::zeros(Device::Cpu, &[n, c]), Tensor::zeros(Device::Cpu, &[n]), Tensor::zeros(Device::Cpu, &[n]));
    layernorm_forward(&mut out_c, &mut mean_c, &mut rstd_c, &inp_c, &weight_c, &bias_c).unwrap();
    let to_gpu = |t: &Tensor| t.to_device(gpu).unwrap();
    let (inp, weight, dout, mean, rstd) = (to_gpu(&inp_c), to_gpu(&weight_c), to_gpu(&dout_c), to_gpu(&mean_c), to_gpu(&rstd_c));
    let mut dinp = Tensor::try_empty(gpu, DType::F32, &[n, c]).unwrap();
    let mut dweight = Tensor::try_zeros(gpu, DType::F32, &[c]).unwrap();
    let mut dbias = Tensor::try_zeros(gpu, DType::F32, &[c]).unwrap();
    let backward = |dinp: &mut Tensor, dweight: &mut Tensor, dbias: &mut Tensor| {
        layernorm_backward(dinp, dweight, dbias, &dout, &inp, &weight, &mean, &rstd)
    };

    let misses = memory::stats(gpu).misses;
    let rose = scratch_peak(gpu, || backward(&mut dinp, &mut dweight, &mut dbias).unwrap());
    assert_eq!(rose, partials, "layernorm_backward's partials are charged to the pool while it runs");
    let s = memory::stats(gpu);
    assert_eq!(s.misses - misses, 1, "one fresh block for the partials");
    let hits = s.hits;
    backward(&mut dinp, &mut dweight, &mut dbias).unwrap();
    let s = memory::stats(gpu);
    assert_eq!((s.hits - hits, s.misses - misses), (1, 1), "the second call reuses the cached partials");

    // twice accumulated, checked against the CPU
    let (mut dinp_c, mut dweight_c, mut dbias_c) = (Tensor::zeros(Device::Cpu, &[n, c]), Tensor::zeros(Device::Cpu, &[c]), Tensor::zeros(Device::Cpu, &[c]));
    for _ in 0..2 {
        layernorm_backward(&mut dinp_c, &mut dweight_c, &mut dbias_c, &dout_c, &inp_c, &weight_c, &mean_c, &rstd_c).unwrap();
    }
    assert_close("layernorm dinp", &dinp.to_vec(), &dinp_c.to_vec(), 1e-4, 1e-4);
    assert_close("layernorm dweight", &dweight.to_vec(), &dweight_c.to_vec(), 1e-4, 1e-4);
    assert_close("layernorm dbias", &dbias.to_vec(), &dbias_c.to_vec(), 1e-4, 1e-4);

    // a budget that holds the tensors but not the scratch: refused, naming the partials
    let in_use = memory::in_use(gpu);
    memory::set_budget(gpu, Some(in_use));
    let err = backward(&mut dinp, &mut dweight, &mut dbias).unwrap_err();
    expect_oom(err, gpu, partials, in_use, in_use);
    memory::set_budget(gpu, None);
    drop((dinp, dweight, dbias, inp, weight, dout, mean, rstd));

    // embedding_backward: token offsets (V+1 u32, cleared) and the sorted positions (B*T u32)
    let (b, t, c, v) = (3usize, 40usize, 24usize, 700usize);
    let mut rng = fastrand::Rng::with_seed(7);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.u32(0..v as u32)).collect();
    let tokens_c = Tensor::from_u32(&[b, t], ids).unwrap();
    let dout_c = random(&[b, t, c], 8, 1.0);
    let (mut dwte_c, mut dwpe_c) = (random(&[v, c], 9, 0.5), random(&[t, c], 10, 0.5));
    let (tokens, dout) = (to_gpu(&tokens_c), to_gpu(&dout_c));
    let (mut dwte, mut dwpe) = (to_gpu(&dwte_c), to_gpu(&dwpe_c));
    let (offsets, sorted) = (size_class((v + 1) * 4), size_class(b * t * 4));
    assert_ne!(offsets, sorted, "distinct classes, so the refusal below names which one");
    let rose = scratch_peak(gpu, || embedding_backward(&mut dwte, Some(&mut dwpe), &dout, &tokens).unwrap());
    assert_eq!(rose, offsets + sorted, "embedding_backward's offsets and sorted positions are charged to the pool");
    // the second call gets the first call's offsets block back, full of prefix sums: it is
    // cleared before counting, or the gradients below would be wrong
    let hits = memory::stats(gpu).hits;
    embedding_backward(&mut dwte, Some(&mut dwpe), &dout, &tokens).unwrap();
    assert_eq!(memory::stats(gpu).hits - hits, 2, "both scratch buffers reused");
    for _ in 0..2 {
        embedding_backward(&mut dwte_c, Some(&mut dwpe_c), &dout_c, &tokens_c).unwrap();
    }
    assert_close("embedding dwte", &dwte.to_vec(), &dwte_c.to_vec(), 1e-5, 1e-5);
    assert_close("embedding dwpe", &dwpe.to_vec(), &dwpe_c.to_vec(), 1e-5, 1e-5);

    // room for the offsets only: the sorted positions are refused, before any launch
    let (dwte_before, dwpe_before) = (dwte.to_vec(), dwpe.to_vec());
    let in_use = memory::in_use(gpu);
    memory::set_budget(gpu, Some(in_use + offsets));
    let err = embedding_backward(&mut dwte, Some(&mut dwpe), &dout, &tokens).unwrap_err();
    expect_oom(err, gpu, sorted, in_use + offsets, in_use + offsets);
    memory::set_budget(gpu, None);
    assert_eq!(dwte.to_vec(), dwte_before, "a refused embedding_backward leaves dwte untouched");
    assert_eq!(dwpe.to_vec(), dwpe_before, "a refused embedding_backward leaves dwpe untouched");
}

//! The `kernels` bench suite on the CPU with `--quick`: every op's entries, the ceilings,
//! rates that equal work / time, and a results file that reads back.

use engine::bench::kernels::{attention_forward_flops, Shapes, OPS};
use engine::bench::{env, kernels, BenchOptions, Results};
use engine::kernels::Device;

fn quick_run() -> Results {
    let options = BenchOptions { configs: Vec::new(), overrides: Vec::new(), device: "cpu".into(), quick: true, quiet: true, registry: Default::default() };
    let mut results = Results::new("kernels", env::capture(Device::Cpu).unwrap());
    kernels::run(&mut results, Device::Cpu, &options).unwrap();
    results
}

fn entry<'a>(results: &'a Results, name: &str) -> &'a engine::bench::Entry {
    results.entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no entry {name}"))
}

#[test]
fn quick_cpu_run_measures_every_op_against_the_ceilings() {
    let results = quick_run();
    const REPEATS: usize = 3; // quick, CPU

    for op in OPS {
        let passes: &[&str] = if op == "adamw" { &["update"] } else { &["forward", "backward"] };
        for pass in passes {
            let time = entry(&results, &format!("kernels/{op}_{pass}/time_ms"));
            assert_eq!(time.samples, REPEATS, "{}", time.name);
            assert!(time.min > 0.0 && time.min <= time.median && time.median <= time.max, "{time:?}");
            let rate = if op.starts_with("matmul") || op == "attention" { "tflops" } else { "gbps" };
            let rate = entry(&results, &format!("kernels/{op}_{pass}/{rate}"));
            assert_eq!(rate.samples, REPEATS);
            entry(&results, &format!("kernels/{op}_{pass}/fraction_of_ceiling"));
        }
    }

    let copy = entry(&results, "kernels/ceiling/copy_gbps");
    let gemm = entry(&results, "kernels/ceiling/gemm_tflops");
    assert_eq!(copy.unit, "GB/s");
    assert_eq!(gemm.unit, "TFLOP/s");
    // 2 cores: between 1 GB/s and 1 TB/s, between 1 GFLOP/s and 100 TFLOP/s
    assert!((1.0..1000.0).contains(&copy.median), "{copy:?}");
    assert!((1e-3..100.0).contains(&gemm.median), "{gemm:?}");

    for e in results.entries.iter().filter(|e| e.name.ends_with("/fraction_of_ceiling")) {
        assert_eq!(e.unit, "fraction");
        // Against a GEMM of our own matmul a GEMM may beat the ceiling only by noise. The
        // copy ceiling streams 512 MiB through DRAM, while a memory-bound op at T=256 rotates
        // ~35 MiB of buffers, more than the 32 MiB assumed but inside the last-level cache of
        // many hosts (480 MiB here): residual_backward measured 1.5-1.95x the copy ceiling,
        // and 2.5x with the machine loaded (which slows the DRAM-bound ceiling run more).
        // Past 5x, a byte count or a unit is wrong.
        let bound = if e.name.starts_with("kernels/matmul") || e.name.starts_with("kernels/attention") { 2.0 } else { 5.0 };
        assert!(e.median > 0.0 && e.median < bound, "{} = {} outside (0, {bound})", e.name, e.median);
    }

    // Rates are the work over the median time, recomputed from the workload's shapes.
    let qkv_time = entry(&results, "kernels/matmul_qkv_forward/time_ms");
    let settings = &results.workloads[&qkv_time.workload].settings;
    let (b, t, c) = (settings["B"].as_u64().unwrap() as f64, settings["T"].as_u64().unwrap() as f64, settings["C"].as_u64().unwrap() as f64);
    assert_eq!((b, t, c), (1.0, 256.0, 768.0));
    let tflops = 2.0 * b * t * c * 3.0 * c / (qkv_time.median / 1e3) / 1e12;
    let rate = entry(&results, "kernels/matmul_qkv_forward/tflops");
    assert!((rate.median / tflops - 1.0).abs() < 1e-9, "{} vs {tflops}", rate.median);
    let ceiling = entry(&results, "kernels/matmul_qkv_forward/fraction_of_ceiling").median * gemm.median;
    assert!((ceiling / tflops - 1.0).abs() < 1e-9, "fraction x ceiling {ceiling} vs {tflops}");

    let residual = entry(&results, "kernels/residual_forward/time_ms");
    let s = &results.workloads[&residual.workload].settings;
    assert_eq!(s["dtype"], "f32");
    let bytes = 3.0 * (s["B"].as_u64().unwrap() * s["T"].as_u64().unwrap() * s["C"].as_u64().unwrap()) as f64 * 4.0;
    let gbps = entry(&results, "kernels/residual_forward/gbps").median;
    assert!((gbps / (bytes / (residual.median / 1e3) / 1e9) - 1.0).abs() < 1e-9, "{gbps}");

    let attention = entry(&results, "kernels/attention_backward/time_ms");
    let tflops = 2.0 * attention_forward_flops(1, 256, 768) / (attention.median / 1e3) / 1e12;
    assert!((entry(&results, "kernels/attention_backward/tflops").median / tflops - 1.0).abs() < 1e-9);

    // Every workload is described, records its buffer sets and seed, and the file reads back.
    for e in &results.entries {
        let w = results.workloads.get(&e.workload).unwrap_or_else(|| panic!("{}: workload {} missing", e.name, e.workload));
        assert_eq!(w.settings["suite"], "kernels", "{}", e.name);
        assert!(w.settings["buffer_sets"].as_u64().unwrap() >= 1, "{}", e.name);
        assert_eq!(w.settings["seed"], 1337, "{}", e.name);
    }
    let adamw = entry(&results, "kernels/adamw_update/time_ms");
    assert_eq!(results.workloads[&adamw.workload].settings["params"], Shapes::new(Device::Cpu, true).gpt2_params());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.json");
    results.write(&path).unwrap();
    // (read checks unique names and described workloads; floats may move by an ulp in JSON)
    let back = Results::read(&path).unwrap();
    let names = |r: &Results| r.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&back), names(&results));
    assert_eq!(back.workloads, results.workloads);
}

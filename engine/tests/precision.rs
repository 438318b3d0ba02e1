//! `train.precision` on a machine without a GPU: bf16 on the CPU is refused up front with a
//! message naming the key, never a panic or a silent fp32 run; `auto` means fp32 there.

use std::path::Path;
use std::process::{Command, Output};

use engine::config::Config;
use kernels::Device;
use models::{Gpt, GptConfig, Precision};

const ENGINE: &str = env!("CARGO_BIN_EXE_engine");
const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/shakespeare-char.toml");

fn train(cwd: &Path, sets: &[&str]) -> Output {
    let mut args = vec!["train", SHIPPED_CONFIG, "--quiet", "--set", "train.max_steps=1", "--set", "run.out_dir=runs"];
    for s in sets {
        args.extend(["--set", s]);
    }
    Command::new(ENGINE).args(&args).current_dir(cwd).env_remove("RUST_BACKTRACE").output().expect("the engine binary runs")
}

/// Exit code 1 and one `error: ` line on stderr containing every needle.
#[track_caller]
fn assert_fails(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for needle in needles {
        assert!(lines[0].contains(needle), "stderr does not name {needle:?}: {}", lines[0]);
    }
}

#[test]
fn bf16_on_the_cpu_is_a_config_error_naming_the_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = train(dir.path(), &["run.device=cpu", "train.precision=bf16"]);
    assert_fails(&out, &["shakespeare-char.toml", "key `train.precision`", "\"bf16\" needs a CUDA device", "run.device = \"cpu\""]);
    assert!(!dir.path().join("runs").exists(), "a refused config must not create the run directory");
}

#[test]
fn unknown_precision_names_the_key_and_the_choices() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = train(dir.path(), &["train.precision=fp16"]);
    assert_fails(&out, &["key `train.precision`", "\"fp16\"", "\"auto\"", "\"fp32\"", "\"bf16\""]);
}

#[test]
fn bf16_with_auto_device_and_no_gpu_is_refused() {
    if kernels::cuda::probe(0).is_ok() && kernels::cuda::device(0).is_ok() {
        eprintln!("skipped: a usable CUDA device is present, so device = \"auto\" picks it and bf16 is allowed");
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let out = train(dir.path(), &["run.device=auto", "train.precision=bf16"]);
    assert_fails(&out, &["key `train.precision`", "\"bf16\" needs a CUDA device", "the CPU"]);
    assert!(!dir.path().join("runs").exists());
}

#[test]
fn auto_precision_is_fp32_on_the_cpu_and_bf16_on_a_gpu() {
    let config = Config::parse("", "empty.toml", &[]).unwrap();
    assert_eq!(config.train.precision, "auto");
    assert_eq!(config.precision(Device::Cpu), Ok(Precision::Fp32));
    assert_eq!(config.precision(Device::Cuda(0)), Ok(Precision::Bf16));
    let fp32 = Config::parse("[train]\nprecision = \"fp32\"\n", "fp32.toml", &[]).unwrap();
    assert_eq!(fp32.precision(Device::Cuda(0)), Ok(Precision::Fp32));
}

#[test]
fn a_bf16_model_on_the_cpu_is_refused_by_the_library_too() {
    let config = GptConfig { vocab_size: 11, context_length: 8, n_layer: 1, n_head: 2, n_embd: 8, ..GptConfig::default() };
    let err = Gpt::with_precision(config, Device::Cpu, Precision::Bf16, 1).err().expect("bf16 on the CPU must fail");
    let msg = err.to_string();
    assert!(msg.contains("bf16") && msg.contains("CPU"), "{msg}");
}

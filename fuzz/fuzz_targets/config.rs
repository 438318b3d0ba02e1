//! The config parser: `Config::parse_in` on arbitrary text with `--set` overrides, then the
//! accessors the trainer calls and a round trip through `to_toml` (what a run records).
//!
//! Input: the config text, then optionally a NUL byte and `--set` items one a line (the bytes
//! read as UTF-8 with invalid sequences replaced, as no config file can hold them).
#![no_main]

use std::sync::OnceLock;

use engine::config::Config;
use engine::kernels::Device;
use engine::registry::Registry;
use libfuzzer_sys::fuzz_target;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::builtin)
}

fuzz_target!(|data: &[u8]| {
    let (text, sets) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let overrides: Vec<String> = String::from_utf8_lossy(sets).lines().map(String::from).collect();
    let Ok(config) = Config::parse_in(&text, "fuzz.toml", &overrides, registry()) else { return };

    // What the trainer and the planner ask of a config that validated: none may panic.
    let _ = config.min_memory_bytes();
    let _ = config.precision(Device::Cpu);
    let _ = config.memory_budget().expect("validated");
    let _ = config.recompute().expect("validated");
    let _ = config.global_batch().expect("validated");
    let _ = config.fixed_micro_batch();
    let _ = config.default_micro_batch();
    let _ = config.run_dir();
    let _ = config.model.spec().describe();

    // The config as a run records it parses back to the same config.
    let recorded = config.to_toml();
    let again = Config::parse_recorded(&recorded, "fuzz.toml (recorded)", registry())
        .unwrap_or_else(|e| panic!("the recorded config does not parse back: {e}\n{recorded}"));
    assert!(again == config, "the recorded config parses back to another config:\n{recorded}");
});

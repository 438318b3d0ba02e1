//! The checkpoint reader: a checkpoint directory of arbitrary files, read as `engine eval`,
//! `sample` and `export` read one (`checkpoint::load_model`) and as `--resume` restores the
//! optimizer (`checkpoint::load_optimizer`). Only public APIs, so a change to what a
//! checkpoint holds changes what the inputs hold, not this target.
//!
//! Input: the files' bytes separated by SEPARATOR, in the order of FILES; a missing or empty
//! piece leaves its file out (without a state.json, a directory with a config.json is read as
//! a Hugging Face `save_pretrained` directory; without a manifest.json the checkpoint loads
//! unverified, with one it is verified). Separators past the last file are its bytes.
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use engine::checkpoint;
use engine::kernels::Device;
use engine::models::Precision;
use engine::optim::AdamW;
use engine::registry::Registry;
use libfuzzer_sys::fuzz_target;

const SEPARATOR: &[u8] = b"\n==> fuzz: next file <==\n";
const FILES: [&str; 5] = ["state.json", "model.safetensors", "optimizer.safetensors", "config.json", "manifest.json"];

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::builtin)
}

/// One directory per process, its files rewritten by each input.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("engine-fuzz-checkpoint-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create the fuzz checkpoint directory");
        dir
    })
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    while pieces.len() + 1 < FILES.len() {
        let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) else { break };
        pieces.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    pieces.push(rest);
    pieces
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let pieces = split(data);
    for (i, name) in FILES.iter().enumerate() {
        let path = dir.join(name);
        match pieces.get(i).filter(|bytes| !bytes.is_empty()) {
            Some(bytes) => fs::write(&path, bytes).expect("write a fuzz checkpoint file"),
            None => drop(fs::remove_file(&path)),
        }
    }

    let state = checkpoint::read_state(dir, registry()).ok().map(|(state, _)| state);
    let Ok(loaded) = checkpoint::load_model(dir, Device::Cpu, Precision::Fp32, registry()) else { return };
    assert_eq!(loaded.state.as_ref().map(|s| s.step), state.as_ref().map(|s| s.step));
    if let Some(state) = &loaded.state {
        let Ok(mut opt) = AdamW::try_new(engine::train::adamw_config(&loaded.config), loaded.model.as_ref()) else { return };
        let _ = checkpoint::load_optimizer(dir, loaded.model.as_ref(), &mut opt, state.step);
    }
});

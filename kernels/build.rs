//! Embeds every `kernels/cuda/*.cu` file in the crate: writes `$OUT_DIR/cuda_sources.rs`, a
//! table of `(file stem, source)` that `cuda::sources` includes, and one of the `*.cuh`
//! headers they include, `(file name, source)`, which every compile hands NVRTC. A new `.cu`
//! file is picked up (embedded, compiled at first use, and compile-checked by
//! `tests/nvrtc_compile.rs`) with no other edit.

use std::{env, fs, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("cuda");
    println!("cargo:rerun-if-changed={}", dir.display());
    let with_extension = |ext: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == ext)).collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        files
    };
    let files = with_extension("cu");
    let mut table = String::from("/// `(file stem, CUDA C source)` of every `kernels/cuda/*.cu`, sorted by stem.\n");
    table.push_str("pub static SOURCES: &[(&str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
        table.push_str(&format!("    ({stem:?}, include_str!({:?})),\n", path.display().to_string()));
    }
    table.push_str("];\n");
    table.push_str("/// `(file name, source)` of every `kernels/cuda/*.cuh`, sorted: the headers every compile gets.\n");
    table.push_str("pub static HEADERS: &[(&str, &str)] = &[\n");
    for path in &with_extension("cuh") {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_name().and_then(|s| s.to_str()).expect("header names are UTF-8");
        table.push_str(&format!("    ({name:?}, include_str!({:?})),\n", path.display().to_string()));
    }
    table.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("cuda_sources.rs");
    fs::write(&out, table).expect("write cuda_sources.rs");
}

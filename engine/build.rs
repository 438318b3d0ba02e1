//! Records the git commit the engine is built from, and whether the tree had uncommitted
//! changes to tracked files, for benchmark results (`engine bench`, crate::bench::env).

use std::path::Path;
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let commit = git(&root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&root, &["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) => (!s.is_empty()).to_string(),
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=ENGINE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=ENGINE_GIT_DIRTY={dirty}");
    // Again when the commit, the index or any source changes (a directory is watched
    // recursively).
    for path in [".git/HEAD", ".git/index", ".git/refs", "kernels/src", "kernels/cuda", "models/src", "datasets/src", "engine/src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}

//! Records the git commit the engine is built from, and whether the tree had uncommitted
//! changes to tracked files, for benchmark results (`engine bench`, crate::bench::env).

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // At run time, not compile time: a build script compiled for one checkout may run for
    // another (a copied target directory, a worktree).
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("..");
    let commit = git(&root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&root, &["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) => (!s.is_empty()).to_string(),
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=ENGINE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=ENGINE_GIT_DIRTY={dirty}");
    // Again when the commit, the index or any source changes (a directory is watched
    // recursively). In a worktree `.git` is a file: ask git where HEAD and the index are.
    for file in ["HEAD", "index"] {
        if let Some(path) = git(&root, &["rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={}", root.join(path).display());
        }
    }
    if let Some(common) = git(&root, &["rev-parse", "--git-common-dir"]) {
        println!("cargo:rerun-if-changed={}", root.join(common).join("refs").display());
    }
    for path in ["kernels/src", "kernels/cuda", "models/src", "datasets/src", "engine/src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}

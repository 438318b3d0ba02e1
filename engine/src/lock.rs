//! One training run per run directory: [`RunLock`] holds an advisory exclusive lock
//! (`flock(2)`) on `<run_dir>/.lock` for as long as it lives. The operating system releases
//! it when the process exits, crashes included, so a stale `.lock` never blocks a later run;
//! the file holds the holder's pid, for the message a second run gets.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::io;
use crate::{Error, Result};

/// The lock file's name in a run directory.
pub const LOCK_FILE: &str = ".lock";

/// The run directory's lock, held until dropped. Dropping it removes `.lock` (and the run
/// directories taking the lock created, if nothing else was written there since).
#[derive(Debug)]
pub struct RunLock {
    file: Option<File>,
    path: PathBuf,
    /// The directories taking the lock created (the run directory and those of its parents
    /// that did not exist), deepest first.
    created: Vec<PathBuf>,
}

impl RunLock {
    /// Takes `run_dir`'s lock (creating the directory and `.lock` if needed) without
    /// waiting: when another run holds it, an error naming the directory and that run's pid.
    /// Nothing in the directory is changed then.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let created: Vec<PathBuf> = run_dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).map(Path::to_path_buf).collect();
        fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        // The holder removes `.lock` when it is done: a file opened just before that is no
        // longer the lock, so after locking, check that the path still names the file
        // locked, and try again if not.
        for _ in 0..100 {
            let mut file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path) {
                Ok(file) => file,
                // The directory was removed by a holder that had created it: again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(run_dir).map_err(io(run_dir))?;
                    continue;
                }
                Err(e) => return Err(Error::Io { path, source: e }),
            };
            if !try_lock(&file).map_err(io(&path))? {
                return Err(in_use(run_dir, &mut file));
            }
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0).map_err(io(&path))?;
            file.rewind().map_err(io(&path))?;
            writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
            return Ok(RunLock { file: Some(file), path, created });
        }
        Err(Error::Usage(format!("{}: could not take the run directory's lock (its .lock kept being replaced)", path.display())))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked, then unlocked by closing: a run that opened the old file
        // meanwhile sees it is gone and takes a new one.
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
        // Only if empty: a run refused before writing anything leaves no directory behind
        // (remove_dir fails on one that holds anything, and then on its parents).
        for dir in &self.created {
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// The error for a run directory another run holds, with that run's pid as `.lock` says.
fn in_use(run_dir: &Path, file: &mut File) -> Error {
    // The holder writes its pid right after locking: give it a moment if it has not yet.
    let mut pid = String::new();
    for _ in 0..50 {
        pid.clear();
        let read = file.rewind().and_then(|()| file.read_to_string(&mut pid));
        if read.is_ok() && !pid.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = match pid.trim() {
        "" => "pid unknown".to_string(),
        p => format!("pid {p}"),
    };
    Error::Usage(format!(
        "run directory {} is in use by another training run ({pid}); wait for it or choose another run.name",
        run_dir.display()
    ))
}

/// Whether `path` still names the open `file` (not removed or replaced since it was opened).
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// An exclusive `flock` on `file` without waiting: `Ok(false)` when another holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock(2) on a descriptor this `File` owns and keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Not Unix: no advisory lock is taken (the file still records the pid).
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

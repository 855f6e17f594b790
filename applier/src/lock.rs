//! One `ulp-apply` at a time per target process: two concurrent runs would race for the same threads
//! and address space, and the loser would fail with misleading errors. An exclusive `flock` on
//! `/run/lock/ulp-apply.PID.lock` (or the temporary directory where `/run/lock` is missing), held
//! until the run ends. The holder removes the file before releasing it, so lock files do not pile
//! up; a run that locked a file which is no longer the one at the path (removed meanwhile by the
//! previous holder) starts over with the new one.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{failed, refused, Result};

/// How long to wait for another holder before refusing. A descriptor of the lock can also outlive
/// its run for a moment in a process that forked just then (until that child execs).
const WAIT: Duration = Duration::from_secs(2);

/// The lock, released when dropped (or when the process exits, however it exits).
pub struct ProcessLock {
    file: File,
    path: PathBuf,
}

impl Drop for ProcessLock {
    fn drop(&mut self) {
        // Remove the file while still holding it; closing `file` then releases the lock.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

fn lock_path(pid: i32) -> PathBuf {
    let dir = PathBuf::from("/run/lock");
    let dir = if dir.is_dir() {
        dir
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("ulp-apply.{pid}.lock"))
}

/// Whether `file` is still the file at `path` (not removed or replaced since it was opened).
fn still_at(file: &File, path: &PathBuf) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Take the lock for `pid`, waiting up to [`WAIT`], or refuse if another `ulp-apply` keeps it.
pub fn lock(pid: i32) -> Result<ProcessLock> {
    let path = lock_path(pid);
    let started = Instant::now();
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| failed!("cannot open lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) if still_at(&file, &path) => return Ok(ProcessLock { file, path }),
            // The previous holder removed it as we locked it: take the one at the path now.
            Ok(()) => continue,
            Err(TryLockError::WouldBlock) if started.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(refused!(
                    "another ulp-apply is working on process {pid} (lock {})",
                    path.display()
                ))
            }
            Err(TryLockError::Error(e)) => {
                return Err(failed!("cannot lock {}: {e}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_leaves_no_file() {
        // A pid no process has (beyond pid_max), so no real run competes with the test.
        let pid = i32::MAX - 7;
        let first = lock(pid).unwrap();
        let path = lock_path(pid);
        assert!(path.exists());
        let started = Instant::now();
        assert!(matches!(lock(pid), Err(crate::error::Error::Refused(_))));
        assert!(started.elapsed() >= WAIT);
        drop(first);
        assert!(!path.exists(), "lock file left behind");
        let again = lock(pid).unwrap();
        drop(again);
        assert!(!path.exists());
    }
}

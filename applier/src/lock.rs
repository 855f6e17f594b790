//! One `ulp-apply` at a time per target process: two concurrent runs would race for the same threads
//! and address space, and the loser would fail with misleading errors. An exclusive `flock` on
//! `/run/lock/ulp-apply.PID.lock` (or the temporary directory where `/run/lock` is missing), held
//! until the run ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

use crate::error::{failed, refused, Result};

/// The lock, released when dropped (or when the process exits, however it exits).
pub struct ProcessLock {
    _file: File,
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

/// How long to wait for another holder before refusing. A descriptor of the lock can also outlive
/// its run for a moment in a process that forked just then (until that child execs).
const WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Take the lock for `pid`, waiting up to [`WAIT`], or refuse if another `ulp-apply` keeps it.
pub fn lock(pid: i32) -> Result<ProcessLock> {
    let path = lock_path(pid);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| failed!("cannot open lock file {}: {e}", path.display()))?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(ProcessLock { _file: file }),
            Err(TryLockError::WouldBlock) if started.elapsed() < WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
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

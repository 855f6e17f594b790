//! What happens when `ulp-build` is interrupted (SIGINT, SIGTERM, SIGHUP): every program it started
//! (compilers, `patch`) is killed with its whole process group, so a compiler driver's `cc1` and
//! `as` die too; its temporary directories are removed; it exits 1 with one `error:` line. Nothing
//! keeps running or stays on disk.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Process groups of running children (each child leads its own group).
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Temporary directories to remove on an interrupt.
static TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Start the thread that cleans up and exits on an interrupt.
pub fn install() -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            for &group in GROUPS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            for dir in TEMP_DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = std::fs::remove_dir_all(dir);
            }
            eprintln!(
                "error: interrupted by signal {signal}; stopped the compilers and removed temporary files"
            );
            std::process::exit(1);
        }
    });
    Ok(())
}

/// A temporary directory that an interrupt removes too.
pub fn temp_dir() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    TEMP_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.path().to_path_buf());
    Ok(dir)
}

/// Run `command` to completion in a process group of its own, which an interrupt kills; like
/// [`Command::output`], with no input and its output collected.
pub fn output(command: &mut Command) -> std::io::Result<Output> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let group = child.id() as i32;
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(group);
    let result = child.wait_with_output();
    GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&g| g != group);
    result
}

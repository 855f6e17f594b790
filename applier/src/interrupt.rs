//! Operator interrupts while `ulp-apply` works on a process. SIGINT, SIGTERM, SIGHUP and SIGQUIT must
//! not cut the tool down between a change to the target and its undo (a breakpoint left in the code,
//! a thread left with injected registers, a region left mapped). A handler only records the request;
//! the waits check it and fail cleanly, so every guard puts the target back. SIGKILL cannot be
//! handled; `docs/APPLY.md` says what it can leave behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{failed, Result};

static REQUESTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Record SIGINT, SIGTERM, SIGHUP and SIGQUIT instead of dying of them.
pub fn install() -> Result<()> {
    let flag = REQUESTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        signal_hook::flag::register(signal, Arc::clone(flag))
            .map_err(|e| failed!("cannot install a handler for signal {signal}: {e}"))?;
    }
    Ok(())
}

/// An error if an interrupt was requested: the caller stops and its guards undo what it did.
pub fn check(pid: i32) -> Result<()> {
    match REQUESTED.get() {
        Some(flag) if flag.load(Ordering::Relaxed) => Err(failed!(
            "interrupted by a signal; stopped work on process {pid} and undid it"
        )),
        _ => Ok(()),
    }
}

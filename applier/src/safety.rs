//! The safety check made while every thread is stopped: no thread may be executing, or about to
//! return into, code that the operation replaces or removes. Each thread's PC is checked, and every
//! 8-byte word of its stack from `rsp` to the end of the stack's mapping (a conservative scan: any
//! word that looks like a return address into a range counts). A word equal to a range's first byte
//! is a function pointer, not a return address (a return address follows a call instruction), so it
//! does not count.

use crate::error::Result;
use crate::maps::{self, Mapping};
use crate::memory::Memory;
use crate::ptrace::{self, AllThreads};

/// A range of code that must not be in use, named for messages.
#[derive(Debug, Clone)]
pub struct Guarded {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// A thread found using a guarded range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub tid: i32,
    pub name: String,
    /// The thread's PC is inside the range (rather than a return address on its stack).
    pub executing: bool,
}

/// Largest stack span scanned per thread.
const MAX_STACK_SCAN: u64 = 64 << 20;

/// Every stopped thread that uses one of `guarded`.
pub fn busy_threads(
    threads: &AllThreads,
    maps: &[Mapping],
    memory: &Memory,
    guarded: &[Guarded],
) -> Result<Vec<Busy>> {
    let mut busy = Vec::new();
    for thread in &threads.threads {
        if let Some((g, executing)) = thread_use(thread.tid, maps, memory, guarded)? {
            busy.push(Busy {
                tid: thread.tid,
                name: g.name.clone(),
                executing,
            });
        }
    }
    Ok(busy)
}

/// The guarded range thread `tid` is executing in (`true`) or would return into (`false`), if any.
fn thread_use<'a>(
    tid: i32,
    maps: &[Mapping],
    memory: &Memory,
    guarded: &'a [Guarded],
) -> Result<Option<(&'a Guarded, bool)>> {
    let regs = ptrace::get_regs(tid)?;
    if let Some(g) = find(guarded, regs.rip) {
        return Ok(Some((g, true)));
    }
    let rsp = regs.rsp & !7;
    let Some(stack) = maps::find(maps, rsp) else {
        return Ok(None);
    };
    let end = stack.end.min(rsp.saturating_add(MAX_STACK_SCAN));
    let mut at = rsp;
    while at < end {
        let len = (end - at).min(1 << 16) as usize;
        let bytes = memory.read(at, len)?;
        for word in bytes.chunks_exact(8) {
            let value = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if let Some(g) = guarded.iter().find(|g| g.start < value && value < g.end) {
                return Ok(Some((g, false)));
            }
        }
        at += len as u64;
    }
    Ok(None)
}

/// The guarded range containing `address`.
pub fn find(guarded: &[Guarded], address: u64) -> Option<&Guarded> {
    guarded
        .iter()
        .find(|g| g.start <= address && address < g.end)
}

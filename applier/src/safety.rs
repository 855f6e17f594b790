//! The safety check made while every thread is stopped: no thread may be executing, or about to
//! return into, code that the operation replaces or removes. Each thread's stack is unwound with the
//! `.eh_frame` of every mapped object (`unwind`); the thread uses a range if any frame's PC lies in
//! it. Where unwinding stops early (no frame information for a PC: a patch, JIT code, a signal
//! trampoline), the rest of the stack, from the stack pointer of that frame to the end of its
//! mapping, is scanned conservatively: any 8-byte word that looks like a return address into a range
//! counts. A word equal to a range's first byte is a function pointer, not a return address (a
//! return address follows a call instruction), so it does not count. Stale words below an unwound
//! frame (old locals, spilled pointers) are thus never mistaken for a use.

use crate::error::Result;
use crate::maps::{self, Mapping};
use crate::memory::Memory;
use crate::ptrace::{self, AllThreads};
use crate::unwind::Unwinder;

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
    /// Where the thread goes when it leaves the guarded code for good: the return address of the
    /// outermost frame in guarded code, when the unwinding found it (a breakpoint there catches it).
    pub exit: Option<u64>,
}

/// Largest stack span scanned per thread.
const MAX_STACK_SCAN: u64 = 64 << 20;

/// Every stopped thread that uses one of `guarded`.
pub fn busy_threads(
    threads: &AllThreads,
    maps: &[Mapping],
    memory: &Memory,
    guarded: &[Guarded],
    unwinder: &mut Unwinder,
) -> Result<Vec<Busy>> {
    let mut busy = Vec::new();
    for thread in &threads.threads {
        if let Some(b) = thread_use(thread.tid, maps, memory, guarded, unwinder)? {
            busy.push(b);
        }
    }
    Ok(busy)
}

/// How thread `tid` uses `guarded`, if it does.
fn thread_use(
    tid: i32,
    maps: &[Mapping],
    memory: &Memory,
    guarded: &[Guarded],
    unwinder: &mut Unwinder,
) -> Result<Option<Busy>> {
    let regs = ptrace::get_regs(tid)?;
    let frames = unwinder.unwind(&regs, maps, memory);
    // The code each frame runs: the PC, or the call just before a return address.
    let code = |i: usize, pc: u64| if i == 0 { pc } else { pc.wrapping_sub(1) };
    let outermost = frames
        .pcs
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, &pc)| find(guarded, code(i, pc)).map(|g| (i, g)));
    let scanned = match frames.stopped_at {
        Some(sp) => scan(sp, maps, memory, guarded)?,
        None => None,
    };
    let busy = match (outermost, scanned) {
        (Some((i, g)), scanned) => Busy {
            tid,
            name: g.name.clone(),
            executing: find(guarded, regs.rip).is_some(),
            exit: if scanned.is_none() {
                frames.pcs.get(i + 1).copied()
            } else {
                None
            },
        },
        (None, Some(g)) => Busy {
            tid,
            name: g.name.clone(),
            executing: false,
            exit: None,
        },
        (None, None) => return Ok(None),
    };
    Ok(Some(busy))
}

/// The conservative scan: the first guarded range an 8-byte word of the stack from `sp` up points
/// into (past its first byte).
fn scan<'a>(
    sp: u64,
    maps: &[Mapping],
    memory: &Memory,
    guarded: &'a [Guarded],
) -> Result<Option<&'a Guarded>> {
    let sp = sp & !7;
    let Some(stack) = maps::find(maps, sp) else {
        return Ok(None);
    };
    let end = stack.end.min(sp.saturating_add(MAX_STACK_SCAN));
    let mut at = sp;
    while at < end {
        let len = (end - at).min(1 << 16) as usize;
        let bytes = memory.read(at, len)?;
        for word in bytes.chunks_exact(8) {
            let value = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if let Some(g) = guarded.iter().find(|g| g.start < value && value < g.end) {
                return Ok(Some(g));
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

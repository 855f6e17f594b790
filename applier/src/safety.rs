//! The safety check made while every thread is stopped: no thread may be executing, or about to
//! return into, code that the operation replaces or removes. Each thread's PC is checked, and every
//! 8-byte word of its stack from `rsp` to the end of the stack's mapping (a conservative scan: any
//! word that looks like an address in a range counts).

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
}

/// Largest stack span scanned per thread.
const MAX_STACK_SCAN: u64 = 64 << 20;

/// The first thread that uses one of `guarded`, if any.
pub fn find_busy(
    threads: &AllThreads,
    maps: &[Mapping],
    memory: &Memory,
    guarded: &[Guarded],
) -> Result<Option<Busy>> {
    let hit = |address: u64| {
        guarded
            .iter()
            .find(|g| g.start <= address && address < g.end)
    };
    for thread in &threads.threads {
        let regs = ptrace::get_regs(thread.tid)?;
        if let Some(g) = hit(regs.rip) {
            return Ok(Some(Busy {
                tid: thread.tid,
                name: g.name.clone(),
            }));
        }
        let rsp = regs.rsp & !7;
        let Some(stack) = maps::find(maps, rsp) else {
            continue;
        };
        let end = stack.end.min(rsp.saturating_add(MAX_STACK_SCAN));
        let mut at = rsp;
        while at < end {
            let len = (end - at).min(1 << 16) as usize;
            let bytes = memory.read(at, len)?;
            for word in bytes.chunks_exact(8) {
                let value = u64::from_le_bytes(word.try_into().expect("8 bytes"));
                if let Some(g) = hit(value) {
                    return Ok(Some(Busy {
                        tid: thread.tid,
                        name: g.name.clone(),
                    }));
                }
            }
            at += len as u64;
        }
    }
    Ok(None)
}

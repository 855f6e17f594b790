//! Reverting an applied patch, in two steps.
//!
//! 1. With every thread stopped: check the entry jumps are still ours, restore the saved bytes and
//!    retire the state header. This needs no thread to be outside the patch: a thread running the
//!    new code finishes its current call there, and every later call runs the original code again.
//!    (The jump is one instruction, so no thread can be stopped half-way through it.)
//! 2. Wait until no thread executes in, or would return into, the patch region (busy threads drain
//!    out by themselves now), then unmap it. If some thread still uses it after the timeout, the
//!    region stays mapped, inert, and the report says so: unmapping code in use would crash the
//!    target, keeping it costs only memory.

use std::time::Duration;

use serde::Serialize;

use ulp_runtime::state::{AppliedPatch, STATE_MAGIC};

use crate::error::{failed, Result};
use crate::maps;
use crate::memory::Memory;
use crate::ptrace::AllThreads;
use crate::quiesce;
use crate::remote_syscall::RemoteSyscaller;
use crate::safety::Guarded;
use crate::stack;
use crate::state_scan;

/// What `revert` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RevertReport {
    pub pid: i32,
    pub id: String,
    pub name: String,
    pub functions: Vec<String>,
    /// Microseconds all threads were stopped to restore the original code.
    pub stop_us: u64,
    /// Whether the patch region was unmapped; when not, `warning` says why.
    pub region_unmapped: bool,
    pub warning: Option<String>,
}

/// Revert patch `id` (or the most recently applied one) in process `pid`.
pub fn revert(pid: i32, id: Option<&str>, timeout: Duration) -> Result<RevertReport> {
    let _lock = crate::lock::lock(pid)?;
    let maps = maps::read(pid)?;
    let memory = Memory::open(pid)?;
    let applied = state_scan::applied(&maps, &memory);
    let patch = choose(&applied, id, pid)?.clone();
    // Top of a stack: the entry gets the previous bytes back; under a later patch: that patch's
    // header is relinked instead (see `stack`).
    let plan = stack::plan_revert(&applied, &patch)?;
    let guarded = [Guarded {
        start: patch.region_start,
        end: patch.region_start + patch.region_size,
        name: format!("code of patch {}", patch.id),
    }];

    let threads = AllThreads::stop(pid)?;
    stack::write_all(&memory, &plan.entries, &plan.headers)?;
    // The header must never claim a patch that is not applied.
    memory.write(patch.region_start, &[0; STATE_MAGIC.len()])?;
    let stop_us = threads.resume().as_micros() as u64;

    let warning = unmap_when_unused(pid, &patch, &guarded, &maps, &memory, timeout).err();
    Ok(RevertReport {
        pid,
        id: patch.id.clone(),
        name: patch.name.clone(),
        functions: patch.functions.iter().map(|f| f.name.clone()).collect(),
        stop_us,
        region_unmapped: warning.is_none(),
        warning: warning.map(|e| {
            format!(
                "patch region at {:#x} kept mapped: {}",
                patch.region_start, e
            )
        }),
    })
}

/// Unmap the patch region once no thread uses it (the patch's code has no frame information, so
/// busy threads are caught in bursts; they leave quickly, since no new call enters the patch).
pub(crate) fn unmap_when_unused(
    pid: i32,
    patch: &AppliedPatch,
    guarded: &[Guarded],
    maps: &[maps::Mapping],
    memory: &Memory,
    timeout: Duration,
) -> Result<()> {
    let safe = quiesce::stop_when_safe(pid, memory, guarded, timeout)?;
    // Nothing refers to the region any more, so once the threads run again none can enter it.
    safe.threads.resume();
    let mut remote = RemoteSyscaller::new(pid, maps, memory)?;
    remote.munmap(patch.region_start, patch.region_size)
}

/// The applied patch `which` names: its id, its name (when only one applied patch has it), or its
/// sequence number as `ulp-info -p` shows it (`#2` or `2`); without `which`, the last applied.
fn choose<'a>(
    applied: &'a [AppliedPatch],
    which: Option<&str>,
    pid: i32,
) -> Result<&'a AppliedPatch> {
    let Some(which) = which else {
        return applied
            .last()
            .ok_or_else(|| failed!("no patch is applied to process {pid}"));
    };
    if let Some(p) = applied.iter().find(|p| p.id == which) {
        return Ok(p);
    }
    let sequence = which.strip_prefix('#').unwrap_or(which);
    if let Some(p) = applied.iter().find(|p| p.sequence.to_string() == sequence) {
        return Ok(p);
    }
    let named: Vec<&AppliedPatch> = applied.iter().filter(|p| p.name == which).collect();
    match named.as_slice() {
        [p] => Ok(p),
        [] => Err(failed!(
            "no patch with id, name or number '{which}' is applied to process {pid}"
        )),
        _ => Err(failed!(
            "{} patches named '{which}' are applied to process {pid}; name one by id",
            named.len()
        )),
    }
}

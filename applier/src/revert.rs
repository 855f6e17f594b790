//! Reverting an applied patch: with every thread stopped and none of them using the patch region,
//! check the entry jumps are still ours, restore the saved bytes and retire the state header; then,
//! with the target running again, unmap the region (one thread stopped briefly).

use std::time::Duration;

use serde::Serialize;

use ulp_runtime::hash::unhex;
use ulp_runtime::state::{AppliedPatch, STATE_MAGIC};

use crate::error::{failed, refused, Result};
use crate::maps;
use crate::memory::Memory;
use crate::quiesce;
use crate::remote_syscall::RemoteSyscaller;
use crate::safety::Guarded;
use crate::state_scan;

/// What `revert` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RevertReport {
    pub pid: i32,
    pub id: String,
    pub name: String,
    pub functions: Vec<String>,
    /// Microseconds all threads were stopped.
    pub stop_us: u64,
    pub attempts: u32,
}

/// Revert patch `id` (or the most recently applied one) in process `pid`.
pub fn revert(pid: i32, id: Option<&str>, timeout: Duration) -> Result<RevertReport> {
    let maps = maps::read(pid)?;
    let memory = Memory::open(pid)?;
    let applied = state_scan::applied(&maps, &memory);
    let patch: AppliedPatch = match id {
        Some(id) => applied
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or_else(|| failed!("patch {id} is not applied to process {pid}"))?,
        None => applied
            .last()
            .cloned()
            .ok_or_else(|| failed!("no patch is applied to process {pid}"))?,
    };
    let mut restores = Vec::new();
    for f in &patch.functions {
        let (Some(saved), Some(written)) = (unhex(&f.saved), unhex(&f.written)) else {
            return Err(failed!(
                "state header of patch {} in process {pid} is corrupt (function '{}')",
                patch.id,
                f.name
            ));
        };
        restores.push((f, saved, written));
    }
    let guarded = [Guarded {
        start: patch.region_start,
        end: patch.region_start + patch.region_size,
        name: format!("code of patch {}", patch.id),
    }];

    let safe = quiesce::stop_when_safe(pid, &memory, &guarded, timeout)?;
    let attempts = safe.bursts + 1;
    for (f, _, written) in &restores {
        if memory.read(f.jump_at, written.len())? != *written {
            return Err(refused!(
                "function '{}' at {:#x} no longer holds the jump of patch {}; not reverting",
                f.name,
                f.jump_at,
                patch.id
            ));
        }
    }
    for (f, saved, _) in &restores {
        memory.write(f.jump_at, saved)?;
    }
    // The header must never claim a patch that is not applied.
    memory.write(patch.region_start, &[0; STATE_MAGIC.len()])?;
    let stop_us = safe.threads.resume().as_micros() as u64;

    let mut remote = RemoteSyscaller::new(pid, &maps, &memory)?;
    remote.munmap(patch.region_start, patch.region_size)?;
    Ok(RevertReport {
        pid,
        id: patch.id.clone(),
        name: patch.name.clone(),
        functions: patch.functions.iter().map(|f| f.name.clone()).collect(),
        stop_us,
        attempts,
    })
}

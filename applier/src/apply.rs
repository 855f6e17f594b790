//! Applying a patch: inspect (target running), prepare (one thread stopped briefly for the remote
//! `mmap`/`mprotect`), commit (all threads stopped: safety check, jumps, state header). Any failure
//! leaves the target as it was: the region is unmapped, bytes restored, every thread resumed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::libc;
use serde::Serialize;

use ulp_runtime::hash::{hex, masked_hash};
use ulp_runtime::link::{self, LinkedImage, Plan, Protection, Resolved};
use ulp_runtime::meta::{Binding, TargetSymbol};
use ulp_runtime::state::{self, AppliedFunction, AppliedPatch};
use ulp_runtime::x86_64::{self, JMP_REL32_LEN};
use ulp_runtime::Patch;

use crate::error::{failed, refused, Result};
use crate::maps::{self, Mapping};
use crate::memory::Memory;
use crate::placement;
use crate::quiesce;
use crate::remote_syscall::{find_syscall_instruction, RemoteSyscaller};
use crate::safety::Guarded;
use crate::stack;
use crate::state_scan;
use crate::symbols::Target;

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How long to keep retrying while a replaced function is in use.
    pub timeout: Duration,
    /// Stop before touching the process: resolve, check and link at a candidate address only.
    pub dry_run: bool,
    /// Swap every patch applied to the process for this one, in one commit (`--replace`).
    pub replace: bool,
    /// Root of separate debug files by build-id (default `/usr/lib/debug`).
    pub debug_dir: Option<std::path::PathBuf>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            timeout: Duration::from_secs(5),
            dry_run: false,
            replace: false,
            debug_dir: None,
        }
    }
}

/// One redirected function, as reported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FunctionReport {
    pub name: String,
    pub address: u64,
    pub jump_at: u64,
    pub new_address: u64,
}

/// One resolved reference, as reported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReferenceReport {
    pub name: String,
    /// Run-time address; 0 for a thread-local variable (see `tp_offset`).
    pub address: u64,
    /// For a thread-local variable: its offset from the thread pointer, the same in every thread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tp_offset: Option<i64>,
}

/// What `apply` did (or, for a dry run, would do).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApplyReport {
    pub pid: i32,
    pub id: String,
    pub name: String,
    pub dry_run: bool,
    pub target_object: String,
    pub sequence: u64,
    pub region_start: u64,
    pub region_size: u64,
    pub functions: Vec<FunctionReport>,
    pub references: Vec<ReferenceReport>,
    /// Microseconds all threads were stopped for the commit (`None` for a dry run).
    pub stop_us: Option<u64>,
    /// Commit attempts made (more than one when a function was busy).
    pub attempts: u32,
    /// With `--replace`: the ids of the patches this one replaced (their headers are retired).
    pub replaced: Vec<String>,
    /// Things that did not go as planned but did not fail the apply (a region kept mapped).
    pub warnings: Vec<String>,
}

/// A function of the target the patch redirects, resolved and checked.
struct Redirect {
    name: String,
    address: u64,
    jump_at: u64,
    /// The bytes at `jump_at` a revert puts back: what is there now, or with `--replace` the
    /// original bytes (the earlier patches' headers are retired).
    saved: Vec<u8>,
    /// The bytes at `jump_at` now: the original bytes, or an earlier patch's jump (stacking).
    current: Vec<u8>,
    size: u64,
    replacement: usize,
}

/// A human name for a target symbol: `file.c:name` for locals.
pub fn symbol_label(symbol: &TargetSymbol) -> String {
    match (&symbol.binding, &symbol.file) {
        (Binding::Local, Some(file)) => format!("{file}:{}", symbol.name),
        _ => symbol.name.clone(),
    }
}

/// Everything learnt while the target runs: resolved functions and references, the plan.
struct Inspection {
    target: Target,
    redirects: Vec<Redirect>,
    external: Vec<Resolved>,
    existing: Vec<AppliedPatch>,
    plan: Plan,
}

fn inspect(
    pid: i32,
    patch: &Patch,
    maps: &[Mapping],
    memory: &Memory,
    options: &ApplyOptions,
) -> Result<Inspection> {
    let replace = options.replace;
    let meta = &patch.meta;
    let mut target = Target::inspect(pid, maps, memory)?;
    crate::target_object::select(
        &mut target,
        &meta.target,
        &meta.id,
        options.debug_dir.as_deref(),
    )?;
    let existing = state_scan::applied(maps, memory);
    if let Some(p) = existing.iter().find(|p| p.id == meta.id) {
        return Err(refused!(
            "patch {} ('{}') is already applied to process {pid}",
            p.id,
            p.name
        ));
    }
    if let Some(missing) = meta
        .depends
        .iter()
        .find(|d| !existing.iter().any(|p| &p.id == *d))
    {
        return Err(refused!(
            "patch {} depends on patch {missing}, which is not applied to process {pid}",
            meta.id
        ));
    }

    let mut redirects = Vec::new();
    for function in &meta.functions {
        let label = symbol_label(&function.target);
        // A function the patch replaces that the program does not have: the patch is for another
        // program (or this one is stripped). That is a wrong target, so a refusal.
        let (address, size) = target
            .resolve_in_executable(&function.target)
            .map_err(|e| {
                let stripped = if target.patched_object().image.symtab.is_empty() {
                    " (it has no symbol table and no debug file was found by build-id: stripped?)"
                } else {
                    ""
                };
                refused!("wrong target: {e}{stripped}")
            })?;
        // A function already patched is compared in its original form, so a patch built from an
        // earlier fix instead of the original source is the usual cause; say so.
        let stacked = existing
            .iter()
            .any(|p| p.functions.iter().any(|f| f.address == address));
        let mismatch = || {
            if stacked {
                refused!(
                    "function '{label}' in process {pid} does not match the patch: it is already \
                     patched, and every patch must be built against the original source, not an \
                     earlier fix"
                )
            } else {
                refused!(
                    "function '{label}' in process {pid} does not match the patch (built from other sources?)"
                )
            }
        };
        if size != function.original_size {
            return Err(mismatch());
        }
        // Stacking: an earlier patch's jump is at the entry; the hash is of the original bytes.
        let running = memory.read(address, size as usize)?;
        let bytes = stack::original_bytes(&existing, address, &running)?;
        if masked_hash(&bytes, &function.masked) != function.original_hash {
            return Err(mismatch());
        }
        let offset = x86_64::jump_offset(&bytes);
        if (offset + JMP_REL32_LEN) as u64 > size {
            return Err(refused!(
                "function '{label}' is {size} bytes, too small for a {}-byte jump",
                offset + JMP_REL32_LEN
            ));
        }
        let (replacement, _) = patch.symbol(&function.replacement).ok_or_else(|| {
            failed!(
                "patch {} has no symbol '{}' (the replacement of '{label}')",
                meta.id,
                function.replacement
            )
        })?;
        redirects.push(Redirect {
            name: label,
            address,
            jump_at: address + offset as u64,
            saved: if replace { &bytes } else { &running }[offset..offset + JMP_REL32_LEN].to_vec(),
            current: running[offset..offset + JMP_REL32_LEN].to_vec(),
            size,
            replacement,
        });
    }
    let external = meta
        .references
        .iter()
        .map(|r| {
            crate::tls::resolve_reference(&target, r, memory).map_err(|e| {
                // A static symbol of an object without any symbol table: stripped, no debug file.
                if r.binding == Binding::Local && target.patched_object().image.symtab.is_empty() {
                    refused!("wrong target: {e} (it has no symbol table and no debug file was found by build-id: stripped?)")
                } else {
                    e
                }
            })
        })
        .collect::<Result<Vec<Resolved>>>()?;
    let plan = link::plan(patch, header_reserve(patch, &target));
    Ok(Inspection {
        target,
        redirects,
        external,
        existing,
        plan,
    })
}

/// Bytes reserved for the state header: the encoding with every number at its widest, plus 1 KiB.
fn header_reserve(patch: &Patch, target: &Target) -> u64 {
    let widest = AppliedPatch {
        id: patch.meta.id.clone(),
        name: patch.meta.name.clone(),
        sequence: u64::MAX,
        applied_at: u64::MAX,
        target_object: target.patched_object().path.clone(),
        region_start: u64::MAX,
        region_size: u64::MAX,
        functions: patch
            .meta
            .functions
            .iter()
            .map(|f| AppliedFunction {
                name: symbol_label(&f.target),
                address: u64::MAX,
                jump_at: u64::MAX,
                new_address: u64::MAX,
                saved: "ff".repeat(JMP_REL32_LEN),
                written: "ff".repeat(JMP_REL32_LEN),
            })
            .collect(),
    };
    state::encode(&widest).len() as u64 + 1024
}

/// Link at the first candidate where every relocation and every entry jump reaches.
fn link_somewhere(
    patch: &Patch,
    inspection: &Inspection,
    maps: &[Mapping],
) -> Result<(LinkedImage, Vec<[u8; JMP_REL32_LEN]>)> {
    let low = link::needs_low_addresses(patch);
    let candidates = placement::candidates(
        maps,
        inspection.target.object_range(),
        inspection.plan.size,
        low,
    );
    let mut last_error = None;
    for base in candidates {
        match link::link_resolved(patch, &inspection.plan, base, &inspection.external) {
            Ok(image) => {
                let jumps: Option<Vec<_>> = inspection
                    .redirects
                    .iter()
                    .map(|r| x86_64::jmp_rel32(r.jump_at, image.symbol_addresses[r.replacement]))
                    .collect();
                if let Some(jumps) = jumps {
                    return Ok((image, jumps));
                }
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => failed!("patch {}: cannot link: {e}", patch.meta.id),
        None => failed!(
            "no free address range of {:#x} bytes within reach of {}{}",
            inspection.plan.size,
            inspection.target.patched_object().path,
            if low { " below 2 GiB" } else { "" }
        ),
    })
}

fn prot(protection: Protection) -> i32 {
    match protection {
        Protection::ReadOnly => libc::PROT_READ,
        Protection::ReadExecute => libc::PROT_READ | libc::PROT_EXEC,
        Protection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    }
}

/// A region mapped in the target; unmapped again when dropped unless committed.
struct MappedRegion {
    pid: i32,
    syscall_at: u64,
    base: u64,
    size: u64,
    committed: bool,
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Ok(mut remote) = RemoteSyscaller::with_instruction(self.pid, self.syscall_at) {
            let _ = remote.munmap(self.base, self.size);
        }
    }
}

/// Map the region, write the image, set the protections: one thread stopped, briefly.
fn prepare(
    pid: i32,
    syscall_at: u64,
    memory: &Memory,
    plan: &Plan,
    image: &LinkedImage,
) -> Result<MappedRegion> {
    let mut remote = RemoteSyscaller::with_instruction(pid, syscall_at)?;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
    let got = remote.mmap_anonymous(
        image.base,
        image.size,
        libc::PROT_READ | libc::PROT_WRITE,
        flags,
    )?;
    if got != image.base {
        // A kernel without MAP_FIXED_NOREPLACE treats the address as a hint.
        let _ = remote.munmap(got, image.size);
        return Err(failed!(
            "mmap placed the patch at {got:#x} instead of {:#x}",
            image.base
        ));
    }
    let mut fill = || -> Result<()> {
        for segment in &image.segments {
            memory.write(segment.address, &segment.bytes)?;
        }
        remote.mprotect(image.base, plan.header_size, libc::PROT_READ)?;
        for segment in &image.segments {
            remote.mprotect(
                segment.address,
                segment.bytes.len() as u64,
                prot(segment.protection),
            )?;
        }
        Ok(())
    };
    if let Err(e) = fill() {
        let _ = remote.munmap(image.base, image.size);
        return Err(e);
    }
    drop(remote);
    Ok(MappedRegion {
        pid,
        syscall_at,
        base: image.base,
        size: image.size,
        committed: false,
    })
}

/// Apply `patch` to process `pid`.
pub fn apply(pid: i32, patch: &Patch, options: &ApplyOptions) -> Result<ApplyReport> {
    let _lock = crate::lock::lock(pid)?;
    let maps = maps::read(pid)?;
    let memory = Memory::open(pid)?;
    let inspection = inspect(pid, patch, &maps, &memory, options)?;
    crate::interrupt::check(pid)?;
    let (image, jumps) = link_somewhere(patch, &inspection, &maps)?;
    let sequence = inspection
        .existing
        .iter()
        .map(|p| p.sequence)
        .max()
        .unwrap_or(0)
        + 1;
    let mut report = ApplyReport {
        pid,
        id: patch.meta.id.clone(),
        name: patch.meta.name.clone(),
        dry_run: options.dry_run,
        target_object: inspection.target.patched_object().path.clone(),
        sequence,
        region_start: image.base,
        region_size: image.size,
        functions: inspection
            .redirects
            .iter()
            .map(|r| FunctionReport {
                name: r.name.clone(),
                address: r.address,
                jump_at: r.jump_at,
                new_address: image.symbol_addresses[r.replacement],
            })
            .collect(),
        references: patch
            .meta
            .references
            .iter()
            .zip(&inspection.external)
            .map(|(r, &value)| ReferenceReport {
                name: symbol_label(r),
                address: match value {
                    Resolved::Address(address) => address,
                    Resolved::ThreadPointerOffset(_) => 0,
                },
                tp_offset: match value {
                    Resolved::Address(_) => None,
                    Resolved::ThreadPointerOffset(offset) => Some(offset),
                },
            })
            .collect(),
        stop_us: None,
        attempts: 0,
        replaced: Vec::new(),
        warnings: Vec::new(),
    };
    let replaced: &[AppliedPatch] = if options.replace {
        &inspection.existing
    } else {
        &[]
    };
    report.replaced = replaced.iter().map(|p| p.id.clone()).collect();
    let addresses: Vec<u64> = inspection.redirects.iter().map(|r| r.address).collect();
    let restores = stack::restores_for_replace(replaced, &addresses)?;
    if options.dry_run {
        return Ok(report);
    }

    let syscall_at = find_syscall_instruction(&maps, &memory)?;
    let mut region = prepare(pid, syscall_at, &memory, &inspection.plan, &image)?;

    let guarded: Vec<Guarded> = inspection
        .redirects
        .iter()
        .map(|r| Guarded {
            start: r.address,
            end: r.address + r.size,
            name: format!("function '{}'", r.name),
        })
        .collect();
    let header = AppliedPatch {
        id: patch.meta.id.clone(),
        name: patch.meta.name.clone(),
        sequence,
        applied_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        target_object: inspection.target.patched_object().path.clone(),
        region_start: image.base,
        region_size: image.size,
        functions: inspection
            .redirects
            .iter()
            .zip(&jumps)
            .map(|(r, jump)| AppliedFunction {
                name: r.name.clone(),
                address: r.address,
                jump_at: r.jump_at,
                new_address: image.symbol_addresses[r.replacement],
                saved: hex(&r.saved),
                written: hex(jump),
            })
            .collect(),
    };
    let header_bytes = state::encode(&header);
    if header_bytes.len() as u64 > inspection.plan.header_size {
        return Err(failed!(
            "state header of {} bytes does not fit its {} reserved bytes",
            header_bytes.len(),
            inspection.plan.header_size
        ));
    }

    let safe = quiesce::stop_when_safe(pid, &memory, &guarded, options.timeout)?;
    report.attempts = safe.bursts + 1;
    // `--replace`: functions only earlier patches redirect get their original bytes back, then
    // the new jumps and header, then the earlier headers are retired, all in this one stop.
    stack::write_all(&memory, &restores, &[])?;
    let committed = commit(
        &memory,
        &inspection.redirects,
        &jumps,
        image.base,
        &header_bytes,
    )
    .and_then(|()| {
        stack::retire(&memory, replaced).inspect_err(|_| {
            uncommit(&memory, &inspection.redirects, image.base);
            for p in replaced {
                let _ = memory.write(p.region_start, &state::STATE_MAGIC);
            }
        })
    });
    if let Err(e) = committed {
        for r in &restores {
            let _ = memory.write(r.at, &r.expect);
        }
        return Err(e);
    }
    let window = safe.threads.resume();
    region.committed = true;
    report.stop_us = Some(window.as_micros() as u64);
    for p in replaced {
        let guarded = [Guarded {
            start: p.region_start,
            end: p.region_start + p.region_size,
            name: format!("code of patch {}", p.id),
        }];
        if let Err(e) =
            crate::revert::unmap_when_unused(pid, p, &guarded, &maps, &memory, options.timeout)
        {
            report.warnings.push(format!(
                "region of replaced patch {} at {:#x} kept mapped: {e}",
                p.id, p.region_start
            ));
        }
    }
    Ok(report)
}

/// With every thread stopped: check the entries are still as inspected, write the jumps, then the
/// header. On failure, bytes already written are put back.
fn commit(
    memory: &Memory,
    redirects: &[Redirect],
    jumps: &[[u8; JMP_REL32_LEN]],
    base: u64,
    header: &[u8],
) -> Result<()> {
    for r in redirects {
        if memory.read(r.jump_at, JMP_REL32_LEN)? != r.current {
            return Err(refused!(
                "function '{}' changed while the patch was prepared",
                r.name
            ));
        }
    }
    let mut written = 0;
    let result = (|| {
        for (r, jump) in redirects.iter().zip(jumps) {
            memory.write(r.jump_at, jump)?;
            written += 1;
        }
        memory.write(base, header)
    })();
    if result.is_err() {
        for r in &redirects[..written] {
            let _ = memory.write(r.jump_at, &r.current);
        }
    }
    result
}

/// Undo a successful [`commit`]: the entries as they were, the new header's magic zeroed.
fn uncommit(memory: &Memory, redirects: &[Redirect], base: u64) {
    for r in redirects {
        let _ = memory.write(r.jump_at, &r.current);
    }
    let _ = memory.write(base, &[0; state::STATE_MAGIC.len()]);
}

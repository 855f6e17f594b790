//! Applying a patch: inspect (target running), prepare (one thread stopped briefly for the remote
//! `mmap`/`mprotect`), commit (all threads stopped: safety check, jumps, state header). Any failure
//! leaves the target as it was: the region is unmapped, bytes restored, every thread resumed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::libc;
use serde::Serialize;

use ulp_runtime::hash::{hex, masked_hash};
use ulp_runtime::link::{self, LinkedImage, Plan, Protection};
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
use crate::state_scan;
use crate::symbols::Target;

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How long to keep retrying while a replaced function is in use.
    pub timeout: Duration,
    /// Stop before touching the process: resolve, check and link at a candidate address only.
    pub dry_run: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            timeout: Duration::from_secs(5),
            dry_run: false,
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
    pub address: u64,
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
}

/// A function of the target the patch redirects, resolved and checked.
struct Redirect {
    name: String,
    address: u64,
    jump_at: u64,
    /// The bytes at `jump_at` that the jump replaces.
    saved: Vec<u8>,
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
    external: Vec<u64>,
    existing: Vec<AppliedPatch>,
    plan: Plan,
}

fn inspect(pid: i32, patch: &Patch, maps: &[Mapping], memory: &Memory) -> Result<Inspection> {
    let meta = &patch.meta;
    if let Some(object) = &meta.target.object {
        return Err(failed!(
            "patch {} targets shared library '{object}'; only the main executable can be patched yet",
            meta.id
        ));
    }
    let target = Target::inspect(pid, maps, memory)?;
    if let (Some(want), Some(have)) = (&meta.target.build_id, &target.exe.image.build_id) {
        if want != have {
            return Err(refused!(
                "patch {} is for build-id {want}, but process {pid} runs {} with build-id {have}",
                meta.id,
                target.exe.path
            ));
        }
    }
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
                let stripped = if target.exe.image.symtab.is_empty() {
                    " (it has no symbol table: stripped?)"
                } else {
                    ""
                };
                refused!("wrong target: {e}{stripped}")
            })?;
        if let Some(p) = existing
            .iter()
            .find(|p| p.functions.iter().any(|f| f.address == address))
        {
            return Err(refused!(
                "function '{label}' is already patched by {}; stacking is not supported yet",
                p.id
            ));
        }
        let mismatch = || {
            refused!(
                "function '{label}' in process {pid} does not match the patch (built from other sources?)"
            )
        };
        if size != function.original_size {
            return Err(mismatch());
        }
        let bytes = memory.read(address, size as usize)?;
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
            saved: bytes[offset..offset + JMP_REL32_LEN].to_vec(),
            size,
            replacement,
        });
    }
    let external = meta
        .references
        .iter()
        .map(|r| target.resolve_reference(r, memory))
        .collect::<Result<Vec<u64>>>()?;
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
        target_object: target.exe.path.clone(),
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
        inspection.target.exe_range(),
        inspection.plan.size,
        low,
    );
    let mut last_error = None;
    for base in candidates {
        match link::link(patch, &inspection.plan, base, &inspection.external) {
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
            inspection.target.exe.path,
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
    let inspection = inspect(pid, patch, &maps, &memory)?;
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
        target_object: inspection.target.exe.path.clone(),
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
            .map(|(r, &address)| ReferenceReport {
                name: symbol_label(r),
                address,
            })
            .collect(),
        stop_us: None,
        attempts: 0,
    };
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
        target_object: inspection.target.exe.path.clone(),
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
    commit(
        &memory,
        &inspection.redirects,
        &jumps,
        image.base,
        &header_bytes,
    )?;
    let window = safe.threads.resume();
    region.committed = true;
    report.stop_us = Some(window.as_micros() as u64);
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
        if memory.read(r.jump_at, JMP_REL32_LEN)? != r.saved {
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
            let _ = memory.write(r.jump_at, &r.saved);
        }
    }
    result
}

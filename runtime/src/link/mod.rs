//! Layout and relocation engine: places a patch's sections in one region of the target's address space
//! and computes every relocation (psABI x86_64 formulas), with far-call stubs and GOT slots for symbols
//! out of `rel32` reach. Every field is overflow-checked; nothing here touches a process.
//!
//! References to existing thread-local variables (local-exec `R_X86_64_TPOFF32`, initial-exec
//! `R_X86_64_GOTTPOFF`) take the variable's offset from the thread pointer instead of an address
//! ([`Resolved::ThreadPointerOffset`], [`link_resolved`]); the applier finds it in the target.
//!
//! Region layout, each part page-aligned because its protection differs:
//! `[state header: R] [code + stubs: R-X] [constants + GOT: R] [data + bss: RW]`.

use std::collections::BTreeMap;

use object::elf;

use crate::patch::{Patch, RelocTarget, SectionKind};
use crate::x86_64::{self, relocation_name, STUB_LEN};

pub const PAGE_SIZE: u64 = 4096;

/// Memory protection of a loaded part of the patch. Never writable and executable at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    ReadOnly,
    ReadExecute,
    ReadWrite,
}

/// Where everything goes, relative to the region base; independent of the base address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Bytes reserved for the state header at the start of the region (page multiple).
    pub header_size: u64,
    /// Total region size (page multiple).
    pub size: u64,
    /// Offset of each patch section from the region base.
    pub section_offsets: Vec<u64>,
    /// The three loaded parts: (offset, size, protection), sizes page multiples, empty parts omitted.
    pub parts: Vec<(u64, u64, Protection)>,
    /// GOT slot (8 bytes, holding the target's absolute address) per relocation target that needs one.
    pub got_slots: BTreeMap<RelocTarget, u64>,
    /// Far-jump stub per external function called with `R_X86_64_PLT32`.
    pub stubs: BTreeMap<usize, u64>,
    /// GOT slot (8 bytes, holding the thread-pointer offset) per external thread-local variable
    /// loaded with `R_X86_64_GOTTPOFF`, by index into the references.
    pub tp_got_slots: BTreeMap<usize, u64>,
}

/// The run-time value of one external reference ([`crate::meta::Meta::references`] entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// An ordinary symbol: its run-time address.
    Address(u64),
    /// A thread-local variable in static TLS: its offset from the thread pointer (the `%fs` base),
    /// the same in every thread. x86_64 uses TLS variant II, so it is negative.
    ThreadPointerOffset(i64),
}

/// A loaded part with its final bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub address: u64,
    pub bytes: Vec<u8>,
    pub protection: Protection,
}

/// The result of linking a patch at a base address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedImage {
    pub base: u64,
    pub size: u64,
    /// Code, constants and data, in address order (the header is written separately).
    pub segments: Vec<Segment>,
    /// Run-time address of each patch symbol, in [`Patch::symbols`] order.
    pub symbol_addresses: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("{r_type} at {section}+{offset:#x} against {target}: value {value:#x} does not fit the field")]
    Overflow {
        section: String,
        offset: u64,
        r_type: String,
        target: String,
        value: i128,
    },
    #[error("{r_type} at {section}+{offset:#x} is not supported")]
    Unsupported {
        section: String,
        offset: u64,
        r_type: String,
    },
    #[error("{count} external addresses given for {expected} references")]
    AddressCount { count: usize, expected: usize },
    #[error("{r_type} at {section}+{offset:#x} against {target}: {problem}")]
    ThreadLocal {
        section: String,
        offset: u64,
        r_type: String,
        target: String,
        problem: &'static str,
    },
}

fn align_up(value: u64, align: u64) -> u64 {
    let align = align.max(1);
    value.div_ceil(align) * align
}

fn part_of(kind: SectionKind) -> usize {
    match kind {
        SectionKind::Text => 0,
        SectionKind::ReadOnlyData => 1,
        SectionKind::Data | SectionKind::Bss => 2,
    }
}

fn uses_got(r_type: u32) -> bool {
    matches!(
        r_type,
        elf::R_X86_64_GOTPCREL | elf::R_X86_64_GOTPCRELX | elf::R_X86_64_REX_GOTPCRELX
    )
}

/// Whether the patch holds absolute 32-bit references to its own contents (`-fno-pie` code), so that
/// the region must lie below 2 GiB.
pub fn needs_low_addresses(patch: &Patch) -> bool {
    patch.relocations.iter().any(|r| {
        matches!(r.r_type, elf::R_X86_64_32 | elf::R_X86_64_32S)
            && !matches!(r.target, RelocTarget::External(_))
    })
}

/// Lay out `patch` after a state header of `header_bytes`.
pub fn plan(patch: &Patch, header_bytes: u64) -> Plan {
    let header_size = align_up(header_bytes.max(1), PAGE_SIZE);
    let mut got_slots = BTreeMap::new();
    let mut stubs = BTreeMap::new();
    let mut tp_got_slots = BTreeMap::new();
    for reloc in &patch.relocations {
        if uses_got(reloc.r_type) {
            got_slots.insert(reloc.target, 0);
        }
        if let (elf::R_X86_64_PLT32, RelocTarget::External(index)) = (reloc.r_type, reloc.target) {
            stubs.insert(index, 0);
            got_slots.insert(reloc.target, 0);
        }
        if let (elf::R_X86_64_GOTTPOFF, RelocTarget::External(index)) = (reloc.r_type, reloc.target)
        {
            tp_got_slots.insert(index, 0);
        }
    }

    let mut section_offsets = vec![0; patch.sections.len()];
    let mut parts = Vec::new();
    let mut cursor = header_size;
    for (part, protection) in [
        Protection::ReadExecute,
        Protection::ReadOnly,
        Protection::ReadWrite,
    ]
    .into_iter()
    .enumerate()
    {
        let start = cursor;
        for (index, section) in patch.sections.iter().enumerate() {
            if part_of(section.kind) == part {
                cursor = align_up(cursor, section.align);
                section_offsets[index] = cursor;
                cursor += section.size;
            }
        }
        if part == 0 {
            for slot in stubs.values_mut() {
                cursor = align_up(cursor, STUB_LEN as u64);
                *slot = cursor;
                cursor += STUB_LEN as u64;
            }
        }
        if part == 1 {
            for slot in got_slots.values_mut().chain(tp_got_slots.values_mut()) {
                cursor = align_up(cursor, 8);
                *slot = cursor;
                cursor += 8;
            }
        }
        let end = align_up(cursor, PAGE_SIZE);
        if end > start {
            parts.push((start, end - start, protection));
        }
        cursor = end;
    }
    Plan {
        header_size,
        size: cursor,
        section_offsets,
        parts,
        got_slots,
        stubs,
        tp_got_slots,
    }
}

/// Link `patch` at region `base`: `external` holds the run-time address of each
/// [`crate::meta::Meta::references`] entry, in order.
pub fn link(
    patch: &Patch,
    plan: &Plan,
    base: u64,
    external: &[u64],
) -> Result<LinkedImage, LinkError> {
    let resolved: Vec<Resolved> = external.iter().map(|&a| Resolved::Address(a)).collect();
    link_resolved(patch, plan, base, &resolved)
}

/// Like [`link`], with each reference resolved either to an address or, for a thread-local
/// variable, to its thread-pointer offset.
pub fn link_resolved(
    patch: &Patch,
    plan: &Plan,
    base: u64,
    external: &[Resolved],
) -> Result<LinkedImage, LinkError> {
    if external.len() != patch.meta.references.len() {
        return Err(LinkError::AddressCount {
            count: external.len(),
            expected: patch.meta.references.len(),
        });
    }
    let mut region = vec![0u8; plan.size as usize];
    for (index, section) in patch.sections.iter().enumerate() {
        let at = plan.section_offsets[index] as usize;
        region[at..at + section.data.len()].copy_from_slice(&section.data);
    }
    let symbol_addresses: Vec<u64> = patch
        .symbols
        .iter()
        .map(|s| base + plan.section_offsets[s.section] + s.offset)
        .collect();
    let value_of = |target: RelocTarget| match target {
        RelocTarget::Symbol(i) => Resolved::Address(symbol_addresses[i]),
        RelocTarget::Section(i) => Resolved::Address(base + plan.section_offsets[i]),
        RelocTarget::External(i) => external[i],
    };
    let misuse = |reloc: &crate::patch::Relocation, problem: &'static str| LinkError::ThreadLocal {
        section: patch.sections[reloc.section].name.clone(),
        offset: reloc.offset,
        r_type: relocation_name(reloc.r_type),
        target: describe(patch, reloc.target),
        problem,
    };
    // An address where one is needed; a thread-local variable has none the patch could use.
    let address_of = |reloc: &crate::patch::Relocation| {
        match value_of(reloc.target) {
        Resolved::Address(a) => Ok(a),
        Resolved::ThreadPointerOffset(_) => Err(misuse(
            reloc,
            "a thread-local variable can only be reached with R_X86_64_TPOFF32 or R_X86_64_GOTTPOFF",
        )),
    }
    };
    for reloc in &patch.relocations {
        if !x86_64::is_supported_tls(reloc.r_type) {
            address_of(reloc)?;
        }
    }
    for (&target, &slot) in &plan.got_slots {
        let Resolved::Address(address) = value_of(target) else {
            continue; // refused above: no relocation that uses this slot reaches here
        };
        region[slot as usize..slot as usize + 8].copy_from_slice(&address.to_le_bytes());
    }
    for (&index, &slot) in &plan.tp_got_slots {
        if let Resolved::ThreadPointerOffset(offset) = external[index] {
            region[slot as usize..slot as usize + 8].copy_from_slice(&offset.to_le_bytes());
        }
    }
    for (&index, &stub) in &plan.stubs {
        let slot = plan.got_slots[&RelocTarget::External(index)];
        let code = x86_64::far_jump_stub(base + stub, base + slot)
            .expect("stub and slot share the region");
        region[stub as usize..stub as usize + STUB_LEN].copy_from_slice(&code);
    }

    for reloc in &patch.relocations {
        let section = &patch.sections[reloc.section];
        let field_at = plan.section_offsets[reloc.section] + reloc.offset;
        let place = base + field_at;
        let a = reloc.addend as i128;
        let p = place as i128;
        let tp_offset = match (x86_64::is_supported_tls(reloc.r_type), reloc.target) {
            (false, _) => None,
            (true, RelocTarget::External(i)) => match external[i] {
                Resolved::ThreadPointerOffset(offset) => Some(offset as i128),
                Resolved::Address(_) => {
                    return Err(misuse(
                        reloc,
                        "the reference is not a thread-local variable",
                    ))
                }
            },
            (true, _) => {
                return Err(misuse(
                    reloc,
                    "new thread-local variables are not supported",
                ))
            }
        };
        let s = match tp_offset {
            Some(_) => 0,
            None => address_of(reloc)? as i128,
        };
        let overflow = |value: i128| LinkError::Overflow {
            section: section.name.clone(),
            offset: reloc.offset,
            r_type: relocation_name(reloc.r_type),
            target: describe(patch, reloc.target),
            value,
        };
        let field: Vec<u8> = match reloc.r_type {
            elf::R_X86_64_64 => ((s + a) as u64).to_le_bytes().to_vec(),
            elf::R_X86_64_PC64 => ((s + a - p) as i64).to_le_bytes().to_vec(),
            elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 => {
                let mut value = s + a - p;
                if i32::try_from(value).is_err() {
                    if let (elf::R_X86_64_PLT32, RelocTarget::External(i)) =
                        (reloc.r_type, reloc.target)
                    {
                        value = (base + plan.stubs[&i]) as i128 + a - p;
                    }
                }
                i32::try_from(value)
                    .map_err(|_| overflow(value))?
                    .to_le_bytes()
                    .to_vec()
            }
            elf::R_X86_64_32 => u32::try_from(s + a)
                .map_err(|_| overflow(s + a))?
                .to_le_bytes()
                .to_vec(),
            elf::R_X86_64_32S => i32::try_from(s + a)
                .map_err(|_| overflow(s + a))?
                .to_le_bytes()
                .to_vec(),
            elf::R_X86_64_TPOFF32 => {
                let value = tp_offset.unwrap_or_default() + a;
                i32::try_from(value)
                    .map_err(|_| overflow(value))?
                    .to_le_bytes()
                    .to_vec()
            }
            elf::R_X86_64_GOTTPOFF => {
                let RelocTarget::External(i) = reloc.target else {
                    unreachable!("checked above: TLS relocations are against references")
                };
                let value = (base + plan.tp_got_slots[&i]) as i128 + a - p;
                i32::try_from(value)
                    .map_err(|_| overflow(value))?
                    .to_le_bytes()
                    .to_vec()
            }
            r if uses_got(r) => {
                let value = (base + plan.got_slots[&reloc.target]) as i128 + a - p;
                i32::try_from(value)
                    .map_err(|_| overflow(value))?
                    .to_le_bytes()
                    .to_vec()
            }
            r => {
                return Err(LinkError::Unsupported {
                    section: section.name.clone(),
                    offset: reloc.offset,
                    r_type: relocation_name(r),
                })
            }
        };
        let at = field_at as usize;
        region[at..at + field.len()].copy_from_slice(&field);
    }

    let segments = plan
        .parts
        .iter()
        .map(|&(offset, size, protection)| Segment {
            address: base + offset,
            bytes: region[offset as usize..(offset + size) as usize].to_vec(),
            protection,
        })
        .collect();
    Ok(LinkedImage {
        base,
        size: plan.size,
        segments,
        symbol_addresses,
    })
}

fn describe(patch: &Patch, target: RelocTarget) -> String {
    match target {
        RelocTarget::Symbol(i) => patch.symbols[i].name.clone(),
        RelocTarget::Section(i) => patch.sections[i].name.clone(),
        RelocTarget::External(i) => patch.meta.references[i].name.clone(),
    }
}

#[cfg(test)]
mod tests;

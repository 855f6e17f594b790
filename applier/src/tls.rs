//! References from patched code to existing thread-local variables of the target: each resolves to
//! the variable's offset from the thread pointer (the `%fs` base), which the runtime's link engine
//! puts in `R_X86_64_TPOFF32` fields (local-exec) and in the patch's GOT slots for
//! `R_X86_64_GOTTPOFF` (initial-exec). The offset is the same in every thread, so one patch serves
//! them all. Only variables in static TLS have such an offset:
//!
//! - A variable of the executable (TLS module 1, x86_64 TLS variant II: the block lies just below the
//!   thread pointer): `st_value - off`, with `off` what glibc's `_dl_determine_tlsoffset` (and, for
//!   static executables, `__libc_setup_tls`) gives module 1:
//!   `roundup(p_memsz - firstbyte, p_align) + firstbyte`, `firstbyte = -p_vaddr mod p_align`
//!   (`PT_TLS`), i.e. `roundup(p_memsz, p_align)` for an aligned segment, as the static linker
//!   computes it for local-exec code.
//! - A variable of a shared library: the value the dynamic linker stored for its
//!   `R_X86_64_TPOFF64` dynamic relocation (the GOT slot of an initial-exec access) in the
//!   executable or any library, read from the running process. A library variable that nothing in
//!   the program reaches initial-exec may not be in static TLS at all: refused.

use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Object, ObjectSymbol, ObjectSymbolTable, RelocationTarget};

use ulp_runtime::link::Resolved;
use ulp_runtime::meta::{Binding, TargetSymbol};

use crate::error::{failed, Result};
use crate::memory::Memory;
use crate::symbols::{self, ElfSymbol, LoadedObject, Target};

/// Resolve reference `symbol` of a patch: a thread-pointer offset for a thread-local variable, else
/// its address as [`Target::resolve_reference`] finds it.
pub fn resolve_reference(
    target: &Target,
    symbol: &TargetSymbol,
    memory: &Memory,
) -> Result<Resolved> {
    let (object, found) = match definition(target, symbol) {
        Some(found) if found.1.kind == elf::STT_TLS => found,
        _ => {
            return target
                .resolve_reference(symbol, memory)
                .map(Resolved::Address)
        }
    };
    let is_exe = std::ptr::eq(object, &target.exe);
    let offset = if is_exe {
        let data = read_object(target.pid, object, true)?;
        let tls = tls_segment(&data, &object.path)?.ok_or_else(|| {
            failed!(
                "thread-local '{}' of {} but the file has no PT_TLS segment",
                symbol.name,
                object.path
            )
        })?;
        tls.thread_pointer_offset(found.value)
    } else {
        library_offset(target, object, found, memory)?
    };
    Ok(Resolved::ThreadPointerOffset(offset))
}

/// The object and symbol that define `symbol` the way [`Target::resolve_reference`] looks them up.
fn definition<'t>(
    target: &'t Target,
    symbol: &TargetSymbol,
) -> Option<(&'t LoadedObject, &'t ElfSymbol)> {
    if symbol.binding == Binding::Local {
        return symbols::resolve_local(&target.exe, symbol)
            .ok()
            .map(|s| (&target.exe, s));
    }
    std::iter::once(&target.exe)
        .chain(&target.libraries)
        .enumerate()
        .find_map(|(i, object)| {
            symbols::find_global(object, &symbol.name, i == 0).map(|s| (object, s))
        })
}

/// The `PT_TLS` segment of a module: what its thread-pointer offsets are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSegment {
    pub vaddr: u64,
    pub memsz: u64,
    pub align: u64,
}

impl TlsSegment {
    /// Offset of `st_value` (an offset in the TLS block) from the thread pointer, for TLS module 1
    /// (the executable) under x86_64 TLS variant II.
    pub fn thread_pointer_offset(&self, st_value: u64) -> i64 {
        let align = self.align.max(1);
        let firstbyte = self.vaddr.wrapping_neg() & (align - 1);
        let block = (self.memsz.saturating_sub(firstbyte)).div_ceil(align) * align + firstbyte;
        st_value as i64 - block as i64
    }
}

fn tls_segment(data: &[u8], what: &str) -> Result<Option<TlsSegment>> {
    let file = ElfFile64::<object::Endianness>::parse(data)
        .map_err(|e| failed!("{what}: not a 64-bit ELF file: {e}"))?;
    let endian = file.endian();
    Ok(file
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == elf::PT_TLS)
        .map(|ph| TlsSegment {
            vaddr: ph.p_vaddr(endian),
            memsz: ph.p_memsz(endian),
            align: ph.p_align(endian),
        }))
}

fn read_object(pid: i32, object: &LoadedObject, is_exe: bool) -> Result<Vec<u8>> {
    let path = if is_exe {
        format!("/proc/{pid}/exe")
    } else {
        object.path.clone()
    };
    std::fs::read(&path).map_err(|e| failed!("cannot read {}: {e}", object.path))
}

/// `R_X86_64_TPOFF64` dynamic relocations of an ELF file: (`r_offset`, symbol name or `None` for a
/// relocation without a symbol, addend).
fn tpoff64_relocations(data: &[u8], what: &str) -> Result<Vec<(u64, Option<String>, i64)>> {
    let file = ElfFile64::<object::Endianness>::parse(data)
        .map_err(|e| failed!("{what}: not a 64-bit ELF file: {e}"))?;
    let table = file.dynamic_symbol_table();
    let mut out = Vec::new();
    for (offset, reloc) in file.dynamic_relocations().into_iter().flatten() {
        if reloc.flags()
            != (object::RelocationFlags::Elf {
                r_type: elf::R_X86_64_TPOFF64,
            })
        {
            continue;
        }
        let name = match (reloc.target(), &table) {
            (RelocationTarget::Symbol(index), Some(table)) => table
                .symbol_by_index(index)
                .ok()
                .and_then(|s| s.name().ok().map(str::to_string)),
            _ => None,
        };
        out.push((offset, name, reloc.addend()));
    }
    Ok(out)
}

/// The thread-pointer offset of thread-local `found` of shared library `library`, from a GOT slot
/// the dynamic linker filled for an initial-exec access to it.
fn library_offset(
    target: &Target,
    library: &LoadedObject,
    found: &ElfSymbol,
    memory: &Memory,
) -> Result<i64> {
    let objects = std::iter::once(&target.exe).chain(&target.libraries);
    for object in objects {
        let is_exe = std::ptr::eq(object, &target.exe);
        let Ok(data) = read_object(target.pid, object, is_exe) else {
            continue;
        };
        for (offset, name, addend) in tpoff64_relocations(&data, &object.path)? {
            // A named relocation's slot holds `S + A - off`; the library's own initial-exec access
            // to its variable has no symbol and `A = st_value`, so its slot holds `st_value - off`.
            let adjust = match name {
                Some(name) if name == found.name => addend,
                None if std::ptr::eq(object, library) && addend == found.value as i64 => 0,
                _ => continue,
            };
            let slot = memory.read_u64(object.bias + offset)? as i64;
            return Ok(slot - adjust);
        }
    }
    Err(failed!(
        "thread-local '{}' of {} is not reached initial-exec by the program (no R_X86_64_TPOFF64 \
         relocation), so it may not be in static TLS; not supported",
        found.name,
        library.path
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_offsets_follow_variant_ii() {
        // A PIE's PT_TLS: 8 bytes, 4-aligned; `total` at 0, `counter` at 4 (checked against the code
        // `ld` wrote for `mov %fs:counter@tpoff, %eax`: `%fs:0xfffffffffffffffc`).
        let tls = TlsSegment {
            vaddr: 0x3dcc,
            memsz: 8,
            align: 4,
        };
        assert_eq!(tls.thread_pointer_offset(4), -4);
        assert_eq!(tls.thread_pointer_offset(0), -8);
        // The block is rounded up to the alignment.
        let tls = TlsSegment {
            vaddr: 0x4000,
            memsz: 0x14,
            align: 16,
        };
        assert_eq!(tls.thread_pointer_offset(0), -0x20);
        assert_eq!(tls.thread_pointer_offset(0x10), -0x10);
    }
}

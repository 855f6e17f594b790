//! x86_64 encodings a live patch needs: the `jmp rel32` written at a replaced function's entry, the
//! `endbr64` landing pad it must step over, far-call stubs, and which bytes around a relocation the
//! linker may rewrite (for the masked original-bytes hash).

use crate::meta::ByteRange;
use object::elf;

/// `endbr64`, the Indirect Branch Tracking landing pad that `-fcf-protection` puts at function entries.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// Length of `jmp rel32` (`E9 xx xx xx xx`).
pub const JMP_REL32_LEN: usize = 5;
/// Length of a far-call stub: `jmp *disp32(%rip)` (`FF 25 xx xx xx xx`), padded to 8 bytes with `int3`.
pub const STUB_LEN: usize = 8;

/// Where in a function the redirecting jump goes: after an `endbr64` (so indirect calls still land on
/// a valid target), else at the first byte.
pub fn jump_offset(entry: &[u8]) -> usize {
    if entry.starts_with(&ENDBR64) {
        ENDBR64.len()
    } else {
        0
    }
}

/// Smallest function size that can hold the redirecting jump, given its first bytes.
pub fn min_patchable_size(entry: &[u8]) -> u64 {
    (jump_offset(entry) + JMP_REL32_LEN) as u64
}

/// Signed 32-bit displacement from `next_ip` to `target`, or `None` if it does not fit.
pub fn rel32(next_ip: u64, target: u64) -> Option<i32> {
    let delta = (target as i128) - (next_ip as i128);
    i32::try_from(delta).ok()
}

/// `jmp rel32` placed at `at`, jumping to `to`; `None` if `to` is out of ±2 GiB reach.
pub fn jmp_rel32(at: u64, to: u64) -> Option<[u8; JMP_REL32_LEN]> {
    let disp = rel32(at + JMP_REL32_LEN as u64, to)?.to_le_bytes();
    Some([0xe9, disp[0], disp[1], disp[2], disp[3]])
}

/// A stub at `at` that jumps to the absolute address stored in the 8-byte slot at `slot`.
pub fn far_jump_stub(at: u64, slot: u64) -> Option<[u8; STUB_LEN]> {
    let disp = rel32(at + 6, slot)?.to_le_bytes();
    Some([0xff, 0x25, disp[0], disp[1], disp[2], disp[3], 0xcc, 0xcc])
}

/// Size in bytes of the field a relocation type writes, `None` for types this project does not handle.
pub fn relocation_field_size(r_type: u32) -> Option<usize> {
    match r_type {
        elf::R_X86_64_64 | elf::R_X86_64_PC64 => Some(8),
        elf::R_X86_64_PC32
        | elf::R_X86_64_PLT32
        | elf::R_X86_64_32
        | elf::R_X86_64_32S
        | elf::R_X86_64_GOTPCREL
        | elf::R_X86_64_GOTPCRELX
        | elf::R_X86_64_REX_GOTPCRELX
        | elf::R_X86_64_TPOFF32
        | elf::R_X86_64_GOTTPOFF => Some(4),
        _ => None,
    }
}

/// Thread-local-storage relocation types the engine computes (local-exec and initial-exec), against
/// existing thread-local variables of the running program only.
pub fn is_supported_tls(r_type: u32) -> bool {
    matches!(r_type, elf::R_X86_64_TPOFF32 | elf::R_X86_64_GOTTPOFF)
}

/// The psABI name of a relocation type, for messages.
pub fn relocation_name(r_type: u32) -> String {
    let name = match r_type {
        elf::R_X86_64_64 => "R_X86_64_64",
        elf::R_X86_64_PC64 => "R_X86_64_PC64",
        elf::R_X86_64_PC32 => "R_X86_64_PC32",
        elf::R_X86_64_PLT32 => "R_X86_64_PLT32",
        elf::R_X86_64_32 => "R_X86_64_32",
        elf::R_X86_64_32S => "R_X86_64_32S",
        elf::R_X86_64_GOTPCREL => "R_X86_64_GOTPCREL",
        elf::R_X86_64_GOTPCRELX => "R_X86_64_GOTPCRELX",
        elf::R_X86_64_REX_GOTPCRELX => "R_X86_64_REX_GOTPCRELX",
        elf::R_X86_64_TPOFF32 => "R_X86_64_TPOFF32",
        elf::R_X86_64_GOTTPOFF => "R_X86_64_GOTTPOFF",
        elf::R_X86_64_TLSGD => "R_X86_64_TLSGD",
        elf::R_X86_64_TLSLD => "R_X86_64_TLSLD",
        elf::R_X86_64_DTPOFF32 => "R_X86_64_DTPOFF32",
        _ => return format!("relocation type {r_type}"),
    };
    name.to_string()
}

/// Bytes of a function that the static linker fills in or may rewrite for a relocation at `offset`:
/// the field itself, and for the relaxable GOT loads (`R_X86_64_GOTPCRELX`, `R_X86_64_REX_GOTPCRELX`)
/// the opcode, ModRM and REX bytes before it, which relaxation turns into `lea`, `mov $imm`,
/// `addr32 call` or `jmp; nop`. An initial-exec TLS load (`R_X86_64_GOTTPOFF`) is likewise relaxed to
/// local-exec (`mov $imm`, `add $imm`, `lea`) in an executable that defines the variable, so its
/// opcode, ModRM and REX bytes are masked too.
pub fn linker_rewritten_bytes(r_type: u32, offset: u64) -> Option<ByteRange> {
    let size = relocation_field_size(r_type)? as u32;
    let offset = offset as u32;
    let before = match r_type {
        elf::R_X86_64_GOTPCRELX => 2,
        elf::R_X86_64_REX_GOTPCRELX | elf::R_X86_64_GOTTPOFF => 3,
        _ => 0,
    }
    .min(offset);
    Some(ByteRange {
        offset: offset - before,
        len: size + before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_goes_after_endbr64() {
        assert_eq!(jump_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
        assert_eq!(jump_offset(&[0x55, 0x48, 0x89, 0xe5]), 0);
        assert_eq!(min_patchable_size(&ENDBR64), 9);
    }

    #[test]
    fn jmp_rel32_encodes_forward_and_backward() {
        assert_eq!(jmp_rel32(0x1000, 0x1005).unwrap(), [0xe9, 0, 0, 0, 0]);
        assert_eq!(
            jmp_rel32(0x1000, 0x1000).unwrap(),
            [0xe9, 0xfb, 0xff, 0xff, 0xff]
        );
        assert!(jmp_rel32(0x1000, 0x1000 + (1 << 32)).is_none());
    }

    #[test]
    fn far_stub_reads_its_slot() {
        let stub = far_jump_stub(0x2000, 0x2010).unwrap();
        assert_eq!(&stub[..2], &[0xff, 0x25]);
        assert_eq!(
            i32::from_le_bytes(stub[2..6].try_into().unwrap()),
            0x2010 - 0x2006
        );
    }

    #[test]
    fn relaxable_got_loads_mask_their_opcode() {
        let r = linker_rewritten_bytes(elf::R_X86_64_REX_GOTPCRELX, 10).unwrap();
        assert_eq!((r.offset, r.len), (7, 7));
        let r = linker_rewritten_bytes(elf::R_X86_64_PLT32, 1).unwrap();
        assert_eq!((r.offset, r.len), (1, 4));
        let r = linker_rewritten_bytes(elf::R_X86_64_TPOFF32, 5).unwrap();
        assert_eq!((r.offset, r.len), (5, 4));
        let r = linker_rewritten_bytes(elf::R_X86_64_GOTTPOFF, 3).unwrap();
        assert_eq!((r.offset, r.len), (0, 7));
        assert!(linker_rewritten_bytes(elf::R_X86_64_TLSGD, 4).is_none());
    }
}

//! Unwinding a stopped thread's stack with the `.eh_frame` call-frame information (gimli) of every
//! object mapped in the target: the executable, every library and the vDSO. Each object's table is
//! loaded once, when a PC first falls into one of its mappings. Code without frame information
//! (anonymous memory such as JIT code or a patch, or an unsupported rule such as the DWARF
//! expressions of signal trampolines and PLT entries) ends the unwinding as *incomplete*: the
//! caller then scans the rest of that stack conservatively.

use std::collections::HashMap;
use std::rc::Rc;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use nix::libc::user_regs_struct;
use object::{Object, ObjectSection, ObjectSegment};

use crate::error::{failed, Result};
use crate::maps::Mapping;
use crate::memory::Memory;

/// Frames followed at most per thread; deeper stacks are scanned conservatively from there.
pub const MAX_FRAMES: usize = 512;

/// The call-frame information of one loaded object.
pub struct FrameTable {
    eh_frame: Vec<u8>,
    /// `.eh_frame_hdr`, whose sorted table makes a lookup a binary search.
    eh_frame_hdr: Option<Vec<u8>>,
    bases: BaseAddresses,
    /// Run-time address minus link-time address.
    bias: u64,
}

/// One step of unwinding from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The caller's frame: its PC (the return address), stack pointer and frame pointer (`None`
    /// when the rules leave it unknown).
    Caller { pc: u64, rsp: u64, rbp: Option<u64> },
    /// The outermost frame: the return address is undefined (`_start`, a thread's entry) or zero.
    Outermost,
    /// No frame information, or a rule this unwinder does not follow.
    Unknown,
}

impl FrameTable {
    /// Read the `.eh_frame` of the object file at `path`, loaded with `bias`; `None` if it has none.
    pub fn load(path: &str, bias: u64) -> Result<Option<FrameTable>> {
        let data = std::fs::read(path).map_err(|e| failed!("cannot read {path}: {e}"))?;
        FrameTable::parse(&data, bias).map_err(|e| failed!("{path} is not a valid ELF file: {e}"))
    }

    /// The frame information of an ELF image in `data`, loaded with `bias`; `None` if it has none.
    fn parse(data: &[u8], bias: u64) -> std::result::Result<Option<FrameTable>, object::Error> {
        let file = object::File::parse(data)?;
        let Some(section) = file.section_by_name(".eh_frame") else {
            return Ok(None);
        };
        let Ok(bytes) = section.data() else {
            return Ok(None);
        };
        let mut bases = BaseAddresses::default().set_eh_frame(section.address());
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        if let Some(got) = file.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        let mut eh_frame_hdr = None;
        if let Some(hdr) = file.section_by_name(".eh_frame_hdr") {
            if let Ok(hdr_bytes) = hdr.data() {
                bases = bases.set_eh_frame_hdr(hdr.address());
                eh_frame_hdr = Some(hdr_bytes.to_vec());
            }
        }
        Ok(Some(FrameTable {
            eh_frame: bytes.to_vec(),
            eh_frame_hdr,
            bases,
            bias,
        }))
    }

    /// The return address of the innermost frame of a thread with registers `regs`, if the frame
    /// information describes its PC with a rule this unwinder follows.
    pub fn return_address(&self, regs: &user_regs_struct, memory: &Memory) -> Option<u64> {
        match self.step(regs.rip, regs.rsp, Some(regs.rbp), memory) {
            Step::Caller { pc, .. } => Some(pc),
            _ => None,
        }
    }

    /// Unwind one frame whose code address (the PC, or a return address minus one) is `lookup`.
    fn step(&self, lookup: u64, rsp: u64, rbp: Option<u64>, memory: &Memory) -> Step {
        let Some(address) = lookup.checked_sub(self.bias) else {
            return Step::Unknown;
        };
        let eh_frame = EhFrame::new(&self.eh_frame, LittleEndian);
        let mut context = UnwindContext::new();
        let found = match &self.eh_frame_hdr {
            Some(hdr) => EhFrameHdr::new(hdr, LittleEndian)
                .parse(&self.bases, 8)
                .ok()
                .and_then(|parsed| {
                    let table = parsed.table()?;
                    table
                        .unwind_info_for_address(
                            &eh_frame,
                            &self.bases,
                            &mut context,
                            address,
                            EhFrame::cie_from_offset,
                        )
                        .ok()
                        .cloned()
                }),
            None => None,
        };
        let row = match found {
            Some(row) => row,
            None => match eh_frame.unwind_info_for_address(
                &self.bases,
                &mut context,
                address,
                EhFrame::cie_from_offset,
            ) {
                Ok(row) => row.clone(),
                Err(_) => return Step::Unknown,
            },
        };
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                let base = match *register {
                    X86_64::RSP => Some(rsp),
                    X86_64::RBP => rbp,
                    _ => None,
                };
                match base.and_then(|b| b.checked_add_signed(*offset)) {
                    Some(cfa) => cfa,
                    None => return Step::Unknown,
                }
            }
            CfaRule::Expression(_) => return Step::Unknown,
        };
        let pc = match row.register(X86_64::RA) {
            Some(RegisterRule::Undefined) => return Step::Outermost,
            Some(RegisterRule::Offset(offset)) => {
                let Some(at) = cfa.checked_add_signed(offset) else {
                    return Step::Unknown;
                };
                match memory.read_u64(at) {
                    Ok(0) => return Step::Outermost,
                    Ok(pc) => pc,
                    // An unreadable return address: the stack ends here.
                    Err(_) => return Step::Outermost,
                }
            }
            _ => return Step::Unknown,
        };
        let rbp = match row.register(X86_64::RBP) {
            Some(RegisterRule::Offset(offset)) => cfa
                .checked_add_signed(offset)
                .and_then(|at| memory.read_u64(at).ok()),
            None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => rbp,
            _ => None,
        };
        // The caller's frame lies above this one; anything else is corrupt information.
        if cfa <= rsp {
            return Step::Unknown;
        }
        Step::Caller { pc, rsp: cfa, rbp }
    }
}

/// The result of unwinding one thread's stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    /// The PC of each frame, innermost first: the thread's `rip`, then return addresses.
    pub pcs: Vec<u64>,
    /// `None` if the unwinding reached the outermost frame; otherwise the stack pointer of the frame
    /// where it stopped (no frame information, or too deep), from which the stack must be scanned.
    pub stopped_at: Option<u64>,
}

/// Unwinds threads of one process, loading each mapped object's frame information once.
pub struct Unwinder {
    pid: i32,
    /// By (path, inode, load address of the object): its table, or `None` if it has none.
    tables: HashMap<(String, u64, u64), Option<Rc<FrameTable>>>,
}

impl Unwinder {
    pub fn new(pid: i32) -> Unwinder {
        Unwinder {
            pid,
            tables: HashMap::new(),
        }
    }

    /// Unwind the stack of a thread stopped with registers `regs`.
    pub fn unwind(&mut self, regs: &user_regs_struct, maps: &[Mapping], memory: &Memory) -> Frames {
        let (mut pc, mut rsp, mut rbp) = (regs.rip, regs.rsp, Some(regs.rbp));
        let mut pcs = Vec::new();
        for depth in 0..MAX_FRAMES {
            pcs.push(pc);
            // A return address follows its call; the call belongs to the frame's function.
            let lookup = if depth == 0 { pc } else { pc.wrapping_sub(1) };
            let Some(table) = self.table_for(lookup, maps, memory) else {
                return Frames {
                    pcs,
                    stopped_at: Some(rsp),
                };
            };
            match table.step(lookup, rsp, rbp, memory) {
                Step::Caller {
                    pc: caller,
                    rsp: caller_rsp,
                    rbp: caller_rbp,
                } => {
                    (pc, rsp, rbp) = (caller, caller_rsp, caller_rbp);
                }
                Step::Outermost => {
                    return Frames {
                        pcs,
                        stopped_at: None,
                    }
                }
                Step::Unknown => {
                    return Frames {
                        pcs,
                        stopped_at: Some(rsp),
                    }
                }
            }
        }
        Frames {
            pcs,
            stopped_at: Some(rsp),
        }
    }

    /// The frame information of the object mapped at `address`, loaded on first use.
    fn table_for(
        &mut self,
        address: u64,
        maps: &[Mapping],
        memory: &Memory,
    ) -> Option<Rc<FrameTable>> {
        let mapping = crate::maps::find(maps, address)?;
        let path = mapping.path.as_deref()?;
        let vdso = path == "[vdso]";
        if path.starts_with('[') && !vdso {
            return None;
        }
        // The object's first mapping: the lowest one of the same file mapped at offset 0 below it.
        let first = maps
            .iter()
            .filter(|m| {
                m.path == mapping.path
                    && m.inode == mapping.inode
                    && m.offset == 0
                    && m.start <= mapping.start
            })
            .max_by_key(|m| m.start)
            .unwrap_or(mapping);
        let key = (path.to_string(), mapping.inode, first.start);
        if let Some(table) = self.tables.get(&key) {
            return table.clone();
        }
        let table = self.load(first, vdso, memory).map(Rc::new);
        self.tables.insert(key, table.clone());
        table
    }

    fn load(&self, first: &Mapping, vdso: bool, memory: &Memory) -> Option<FrameTable> {
        let data = if vdso {
            memory
                .read(first.start, (first.end - first.start) as usize)
                .ok()?
        } else {
            let by_range = format!(
                "/proc/{}/map_files/{:x}-{:x}",
                self.pid, first.start, first.end
            );
            let path = first.path.as_deref()?;
            std::fs::read(by_range)
                .or_else(|_| std::fs::read(path))
                .ok()?
        };
        let file = object::File::parse(&*data).ok()?;
        let lowest = file.segments().map(|s| s.address()).min()?;
        let bias = first.start.wrapping_sub(lowest & !0xfff);
        FrameTable::parse(&data, bias).ok().flatten()
    }
}

//! One-frame unwinding with the executable's `.eh_frame` (gimli): the return address of a thread
//! stopped inside a function, so that a breakpoint there catches the thread on its way out of the
//! function being replaced.

use gimli::{
    BaseAddresses, CfaRule, EhFrame, LittleEndian, RegisterRule, UnwindContext, UnwindSection,
    X86_64,
};
use nix::libc::user_regs_struct;
use object::{Object, ObjectSection};

use crate::error::{failed, Result};
use crate::memory::Memory;

/// The call-frame information of one loaded object.
pub struct FrameTable {
    eh_frame: Vec<u8>,
    bases: BaseAddresses,
    /// Run-time address minus link-time address.
    bias: u64,
}

impl FrameTable {
    /// Read the `.eh_frame` of the object file at `path`, loaded with `bias`; `None` if it has none.
    pub fn load(path: &str, bias: u64) -> Result<Option<FrameTable>> {
        let data = std::fs::read(path).map_err(|e| failed!("cannot read {path}: {e}"))?;
        let file = object::File::parse(&*data)
            .map_err(|e| failed!("{path} is not a valid ELF file: {e}"))?;
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
        Ok(Some(FrameTable {
            eh_frame: bytes.to_vec(),
            bases,
            bias,
        }))
    }

    /// The return address of the innermost frame of a thread with registers `regs`, if the frame
    /// information describes its PC with a rule this unwinder follows (CFA = register + offset,
    /// return address saved at CFA + offset).
    pub fn return_address(&self, regs: &user_regs_struct, memory: &Memory) -> Option<u64> {
        let eh_frame = EhFrame::new(&self.eh_frame, LittleEndian);
        let mut context = UnwindContext::new();
        let pc = regs.rip.checked_sub(self.bias)?;
        let row = eh_frame
            .unwind_info_for_address(&self.bases, &mut context, pc, EhFrame::cie_from_offset)
            .ok()?;
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                let base = match *register {
                    X86_64::RSP => regs.rsp,
                    X86_64::RBP => regs.rbp,
                    _ => return None,
                };
                base.checked_add_signed(*offset)?
            }
            CfaRule::Expression(_) => return None,
        };
        match row.register(X86_64::RA) {
            Some(RegisterRule::Offset(offset)) => {
                memory.read_u64(cfa.checked_add_signed(offset)?).ok()
            }
            _ => None,
        }
    }
}

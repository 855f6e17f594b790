//! System calls made by the target on our behalf (`mmap`, `mprotect`, `munmap`).
//!
//! One thread is stopped; its registers are saved; `rip` is pointed at a `syscall` instruction found
//! in an executable mapping, the arguments are loaded, `orig_rax` is set to -1 so the kernel's
//! syscall-restart logic leaves our call alone, and the thread single-steps over it. The exact saved
//! registers are then restored, so a thread that was blocked in `read()` or `nanosleep()` restarts
//! that call on resume (its saved `rax` is `-ERESTARTSYS`/`-ERESTART_RESTARTBLOCK`) without `EINTR`.

use nix::libc;

use crate::error::{failed, Result};
use crate::maps::Mapping;
use crate::memory::Memory;
use crate::ptrace::{self, StoppedThread};

/// The `syscall` instruction.
const SYSCALL: [u8; 2] = [0x0f, 0x05];

/// Address of a `syscall` instruction in an executable, file-backed mapping (libc's text first).
pub fn find_syscall_instruction(maps: &[Mapping], memory: &Memory) -> Result<u64> {
    let mut candidates: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.read && m.execute && m.path.is_some())
        .collect();
    candidates.sort_by_key(|m| {
        let path = m.path.as_deref().unwrap_or("");
        let libc = path.rsplit('/').next().unwrap_or("").starts_with("libc");
        (!libc, path == "[vsyscall]")
    });
    for mapping in candidates {
        if mapping.path.as_deref() == Some("[vsyscall]") {
            continue;
        }
        let mut at = mapping.start;
        const CHUNK: u64 = 1 << 16;
        while at < mapping.end {
            let len = (mapping.end - at).min(CHUNK + 1) as usize;
            let Ok(bytes) = memory.read(at, len) else {
                break;
            };
            if let Some(i) = bytes.windows(2).position(|w| w == SYSCALL) {
                return Ok(at + i as u64);
            }
            at += CHUNK;
        }
    }
    Err(failed!(
        "no 'syscall' instruction found in the target's executable mappings"
    ))
}

/// A stopped thread ready to run system calls for us; resumed with its registers intact when dropped.
pub struct RemoteSyscaller {
    thread: StoppedThread,
    syscall_at: u64,
}

impl RemoteSyscaller {
    /// Stop one thread of `pid`.
    pub fn new(pid: i32, maps: &[Mapping], memory: &Memory) -> Result<RemoteSyscaller> {
        Self::with_instruction(pid, find_syscall_instruction(maps, memory)?)
    }

    /// Stop one thread of `pid`, with a `syscall` instruction already found at `syscall_at`.
    pub fn with_instruction(pid: i32, syscall_at: u64) -> Result<RemoteSyscaller> {
        let thread = StoppedThread::stop_any(pid)?;
        Ok(RemoteSyscaller { thread, syscall_at })
    }

    /// The thread that runs the calls.
    pub fn tid(&self) -> i32 {
        self.thread.thread.tid
    }

    /// Run system call `nr` with up to six arguments; the raw return value (`-errno` on failure).
    pub fn call(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let tid = self.tid();
        let mut regs = self.thread.saved;
        regs.rip = self.syscall_at;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX; // -1: not inside a system call, so no restart logic applies.
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::set_regs(tid, regs)?;
        let result = self.thread.step_to(self.syscall_at + SYSCALL.len() as u64);
        // Put the thread back as it was whatever happened.
        let restored = ptrace::set_regs(tid, self.thread.saved);
        let after = result?;
        restored?;
        Ok(after.rax as i64)
    }

    /// `mmap(address, size, prot, flags, -1, 0)`; the mapped address.
    pub fn mmap_anonymous(
        &mut self,
        address: u64,
        size: u64,
        prot: i32,
        flags: i32,
    ) -> Result<u64> {
        let ret = self.call(
            libc::SYS_mmap,
            [address, size, prot as u64, flags as u64, u64::MAX, 0],
        )?;
        if (-4095..0).contains(&ret) {
            return Err(failed!(
                "mmap of {size:#x} bytes at {address:#x} in thread {} failed: {}",
                self.tid(),
                nix::errno::Errno::from_raw(-ret as i32)
            ));
        }
        Ok(ret as u64)
    }

    pub fn mprotect(&mut self, address: u64, size: u64, prot: i32) -> Result<()> {
        let ret = self.call(libc::SYS_mprotect, [address, size, prot as u64, 0, 0, 0])?;
        if ret != 0 {
            return Err(failed!(
                "mprotect of {size:#x} bytes at {address:#x} failed: {}",
                nix::errno::Errno::from_raw(-ret as i32)
            ));
        }
        Ok(())
    }

    pub fn munmap(&mut self, address: u64, size: u64) -> Result<()> {
        let ret = self.call(libc::SYS_munmap, [address, size, 0, 0, 0, 0])?;
        if ret != 0 {
            return Err(failed!(
                "munmap of {size:#x} bytes at {address:#x} failed: {}",
                nix::errno::Errno::from_raw(-ret as i32)
            ));
        }
        Ok(())
    }
}

//! `ulp-apply`: applies, reverts and lists live patches in running x86_64 Linux processes.
//!
//! It owns everything that touches a process: `/proc/PID/maps` and `/proc/PID/mem`, ptrace stops,
//! remote system calls, symbol resolution in the running program, choosing where the patch goes,
//! the safety check, and the commit/revert protocol (see `docs/APPLY.md`). It does not own the patch
//! format, the relocation engine or the state header's encoding: those live in `ulp-runtime`.
//!
//! The tool is stateless: every applied patch is recorded in the target itself ([`state_scan`]).

pub mod apply;
pub mod cli;
pub mod error;
pub mod fleet;
pub mod interrupt;
pub mod lock;
pub mod maps;
pub mod memory;
pub mod placement;
pub mod ptrace;
pub mod quiesce;
pub mod remote_syscall;
pub mod report;
pub mod revert;
pub mod safety;
pub mod stack;
pub mod state_scan;
pub mod symbols;
pub mod target_object;
pub mod tls;
pub mod unwind;

pub use error::{Error, Result};

pub use apply::{apply, ApplyOptions, ApplyReport};
pub use revert::{revert, RevertReport};

//! `ulp-runtime`: everything that defines and links a live patch, and nothing that touches a process.
//!
//! It owns the `.ulp` patch format ([`patch`] is the in-memory model, [`format`] reads and writes it as
//! an ELF64 relocatable object with a `.ulp.meta` section, [`meta`] is that section's content), the
//! record a patch leaves inside the target ([`state`]), the masked original-bytes hash ([`hash`]), the
//! layout and relocation engine ([`link`]) and the x86_64 encodings ([`x86_64`]).
//!
//! It does not own ptrace, `/proc` or compilers: `ulp-build` produces a [`patch::Patch`], `ulp-apply`
//! consumes one, and both meet only here.

pub mod format;
pub mod hash;
pub mod link;
pub mod meta;
pub mod patch;
pub mod state;
pub mod x86_64;

pub use format::{read_patch, write_patch, FormatError};
pub use meta::Meta;
pub use patch::Patch;

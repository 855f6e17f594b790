//! `ulp-build`: turns a change to one C translation unit into a live patch (`.ulp`).
//!
//! The pipeline follows kpatch's create-diff-object rules, one module per step, with plain data passed
//! between them so that each step can be tested on a pair of objects without running a process:
//! [`compile`] both sources → [`object_model`] parse the objects → [`correlate`] pair symbols by name →
//! [`compare`] find changed functions and data → [`closure`] decide what is carried and what is referred
//! to in the running program → [`refuse`] reject what cannot be live-patched → [`emit`] build the
//! [`ulp_runtime::Patch`]. [`cli`] ties them together behind the `ulp-build` command line.
//!
//! It does not own the `.ulp` format (that is `ulp-runtime`) nor anything that touches a process.

pub mod cli;
pub mod closure;
pub mod compare;
pub mod compile;
pub mod correlate;
pub mod distro;
pub mod dwarf;
pub mod emit;
pub mod explain;
pub mod inputs;
pub mod interrupt;
pub mod lines;
pub mod object_model;
pub mod refuse;
pub mod target;

pub use cli::{analyze, Analysis};

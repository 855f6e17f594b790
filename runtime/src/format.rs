//! Reading and writing `.ulp` files: an ELF64 relocatable object for the patch's architecture.
//! Implementation in progress.

use crate::patch::Patch;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{0}")]
    Invalid(String),
}

/// Serialize `patch` to `.ulp` bytes, filling in `patch.meta.id` (the content hash).
pub fn write_patch(patch: &mut Patch) -> Result<Vec<u8>, FormatError> {
    let _ = patch;
    Err(FormatError::Invalid("writer not implemented yet".into()))
}

/// Parse and fully validate `.ulp` bytes.
pub fn read_patch(bytes: &[u8]) -> Result<Patch, FormatError> {
    let _ = bytes;
    Err(FormatError::Invalid("reader not implemented yet".into()))
}

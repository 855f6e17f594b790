//! The record a patch leaves inside the target process. `ulp-apply` is stateless: every applied patch
//! lives in a region of the target's memory that begins with this header, so `ulp-info -p PID` and
//! `ulp-apply --revert` work from any later invocation by reading it back.
//!
//! Encoding: the 8-byte magic `ULPSTATE`, a little-endian `u32` header version, a little-endian `u32`
//! length `n`, then `n` bytes of JSON ([`AppliedPatch`]). The header occupies the first page(s) of the
//! patch region and is mapped read-only.

use serde::{Deserialize, Serialize};

pub const STATE_MAGIC: [u8; 8] = *b"ULPSTATE";
pub const STATE_VERSION: u32 = 1;
/// Bytes before the JSON body: magic, version, length.
pub const STATE_PREFIX_LEN: usize = 16;
/// Upper bound on a header body, so a corrupt length cannot make a reader allocate without limit.
pub const STATE_MAX_LEN: usize = 1 << 20;

/// One function redirected by an applied patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFunction {
    pub name: String,
    /// Run-time address of the original function's first byte.
    pub address: u64,
    /// Run-time address where the jump was written (after `endbr64`, if any).
    pub jump_at: u64,
    /// Run-time address of the replacement code.
    pub new_address: u64,
    /// The bytes at `jump_at` before the patch (lowercase hex), restored on revert.
    pub saved: String,
    /// The bytes written at `jump_at` (lowercase hex), so a revert can tell whether they are still ours.
    pub written: String,
}

/// Everything the target holds about one applied patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPatch {
    pub id: String,
    pub name: String,
    /// Order of application in this process: 1 for the first patch, then increasing.
    pub sequence: u64,
    /// Seconds since the Unix epoch when the patch was committed.
    pub applied_at: u64,
    /// Path of the object patched (main executable or library), as seen in `/proc/PID/maps`.
    pub target_object: String,
    /// The whole mapping that holds this header, the code and the data of the patch.
    pub region_start: u64,
    pub region_size: u64,
    pub functions: Vec<AppliedFunction>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("not a patch state header (bad magic)")]
    BadMagic,
    #[error(
        "patch state header version {0} is not supported (this tool reads version {STATE_VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error("patch state header is truncated")]
    Truncated,
    #[error("patch state header is corrupt: {0}")]
    Corrupt(String),
}

/// Serialize a header: prefix plus JSON body.
pub fn encode(patch: &AppliedPatch) -> Vec<u8> {
    let body = serde_json::to_vec(patch).expect("AppliedPatch serializes");
    let mut out = Vec::with_capacity(STATE_PREFIX_LEN + body.len());
    out.extend_from_slice(&STATE_MAGIC);
    out.extend_from_slice(&STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// From the first [`STATE_PREFIX_LEN`] bytes of a region, the total header length to read; an error
/// if the region does not start with a header this tool understands.
pub fn header_len(prefix: &[u8]) -> Result<usize, StateError> {
    if prefix.len() < STATE_PREFIX_LEN {
        return Err(StateError::Truncated);
    }
    if prefix[..8] != STATE_MAGIC {
        return Err(StateError::BadMagic);
    }
    let version = u32::from_le_bytes(prefix[8..12].try_into().unwrap());
    if version != STATE_VERSION {
        return Err(StateError::UnsupportedVersion(version));
    }
    let len = u32::from_le_bytes(prefix[12..16].try_into().unwrap()) as usize;
    if len > STATE_MAX_LEN {
        return Err(StateError::Corrupt(format!(
            "body length {len} is too large"
        )));
    }
    Ok(STATE_PREFIX_LEN + len)
}

/// Parse a whole header.
pub fn decode(bytes: &[u8]) -> Result<AppliedPatch, StateError> {
    let total = header_len(bytes)?;
    let body = bytes
        .get(STATE_PREFIX_LEN..total)
        .ok_or(StateError::Truncated)?;
    serde_json::from_slice(body).map_err(|e| StateError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AppliedPatch {
        AppliedPatch {
            id: "0123456789abcdef".into(),
            name: "fix".into(),
            sequence: 2,
            applied_at: 1_800_000_000,
            target_object: "/usr/bin/prog".into(),
            region_start: 0x5555_0000_0000,
            region_size: 0x3000,
            functions: vec![AppliedFunction {
                name: "compute".into(),
                address: 0x5555_5555_1000,
                jump_at: 0x5555_5555_1004,
                new_address: 0x5555_0000_1000,
                saved: "554889e5c3".into(),
                written: "e9f7ffffff".into(),
            }],
        }
    }

    #[test]
    fn header_round_trips() {
        let bytes = encode(&sample());
        assert_eq!(header_len(&bytes[..STATE_PREFIX_LEN]).unwrap(), bytes.len());
        assert_eq!(decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn foreign_or_damaged_headers_are_errors() {
        let mut bytes = encode(&sample());
        assert_eq!(decode(&bytes[..10]), Err(StateError::Truncated));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(StateError::Truncated)
        );
        bytes[8] = 9;
        assert_eq!(decode(&bytes), Err(StateError::UnsupportedVersion(9)));
        bytes[0] = b'X';
        assert_eq!(decode(&bytes), Err(StateError::BadMagic));
    }
}

//! The masked original-bytes hash: how `ulp-apply` knows that the running function is the one the
//! patch was built against, even without a build-id. Bytes that the linker fills in or may rewrite
//! are zeroed before hashing, so the same source gives the same hash in the object and in the binary.

use crate::meta::ByteRange;
use sha2::{Digest, Sha256};

/// Lowercase hex of SHA-256 over `bytes` with every `masked` range zeroed.
pub fn masked_hash(bytes: &[u8], masked: &[ByteRange]) -> String {
    let mut copy = bytes.to_vec();
    for range in masked {
        let start = (range.offset as usize).min(copy.len());
        let end = (range.offset as usize + range.len as usize).min(copy.len());
        copy[start..end].fill(0);
    }
    hex(&Sha256::digest(&copy))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse lowercase or uppercase hex; `None` if it is not hex of whole bytes.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_bytes_do_not_change_the_hash() {
        let a = [0xe8, 1, 2, 3, 4, 0xc3];
        let b = [0xe8, 9, 9, 9, 9, 0xc3];
        let mask = [ByteRange { offset: 1, len: 4 }];
        assert_eq!(masked_hash(&a, &mask), masked_hash(&b, &mask));
        assert_ne!(masked_hash(&a, &[]), masked_hash(&b, &[]));
    }

    #[test]
    fn unmasked_change_changes_the_hash() {
        let mask = [ByteRange { offset: 1, len: 4 }];
        assert_ne!(
            masked_hash(&[0xe8, 0, 0, 0, 0, 0xc3], &mask),
            masked_hash(&[0xe9, 0, 0, 0, 0, 0xc3], &mask)
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 0xab, 0xff])).unwrap(), vec![0, 0xab, 0xff]);
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}

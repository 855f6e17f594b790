//! Stacked patches: several applied patches redirecting the same function.
//!
//! Every patch records, per function, the bytes it found at `jump_at` (`saved`) and the jump it
//! wrote (`written`). For one function the applied patches form a chain by sequence number: the
//! earliest one's `saved` are the original bytes, each later one's `saved` is the jump of the one
//! before it, and the entry holds the jump of the latest (the *top*). This module keeps that chain
//! consistent when a patch in the middle is reverted, and plans `--replace`.

use ulp_runtime::hash::{hex, unhex};
use ulp_runtime::state::{self, AppliedFunction, AppliedPatch, STATE_MAGIC};

use crate::error::{failed, refused, Result};
use crate::memory::Memory;

/// The applied patches that redirect the function at `address`, earliest first (`applied` is
/// sorted by sequence, as `state_scan::applied` returns it).
pub fn chain(applied: &[AppliedPatch], address: u64) -> Vec<(&AppliedPatch, &AppliedFunction)> {
    applied
        .iter()
        .filter_map(|p| {
            p.functions
                .iter()
                .find(|f| f.address == address)
                .map(|f| (p, f))
        })
        .collect()
}

fn bytes_of(patch: &AppliedPatch, f: &AppliedFunction, which: &str) -> Result<Vec<u8>> {
    let text = if which == "saved" {
        &f.saved
    } else {
        &f.written
    };
    unhex(text).ok_or_else(|| {
        failed!(
            "state header of patch {} is corrupt (function '{}', {which})",
            patch.id,
            f.name
        )
    })
}

/// The function's original bytes: the running bytes (read from `address`) with the earliest
/// patch's `saved` bytes put back at its `jump_at`. Without patches, the running bytes.
pub fn original_bytes(applied: &[AppliedPatch], address: u64, running: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = running.to_vec();
    if let Some((p, f)) = chain(applied, address).first() {
        let saved = bytes_of(p, f, "saved")?;
        let at = f.jump_at.checked_sub(address).map(|o| o as usize);
        match at {
            Some(at) if at + saved.len() <= bytes.len() => {
                bytes[at..at + saved.len()].copy_from_slice(&saved)
            }
            _ => {
                return Err(failed!(
                    "state header of patch {} is corrupt: function '{}' jump outside the function",
                    p.id,
                    f.name
                ))
            }
        }
    }
    Ok(bytes)
}

/// The earliest patch's `saved` bytes for the function at `address`, if some patch redirects it.
pub fn original_entry(applied: &[AppliedPatch], address: u64) -> Result<Option<Vec<u8>>> {
    chain(applied, address)
        .first()
        .map(|(p, f)| bytes_of(p, f, "saved"))
        .transpose()
}

/// One write at a function entry, made only if the entry still holds `expect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryWrite {
    pub name: String,
    pub at: u64,
    pub expect: Vec<u8>,
    pub bytes: Vec<u8>,
}

/// A state header rewritten in place (a later patch's `saved` after a middle revert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRewrite {
    pub id: String,
    pub at: u64,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

/// What reverting one patch writes, all with every thread stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevertPlan {
    pub entries: Vec<EntryWrite>,
    pub headers: Vec<HeaderRewrite>,
}

/// Plan the revert of `patch`. For a function where it is the top of the chain, the entry gets its
/// `saved` bytes back. For one a later patch also redirects, the entry keeps the latest jump and the
/// next later patch's `saved` becomes `patch`'s `saved`, so the chain skips it.
pub fn plan_revert(applied: &[AppliedPatch], patch: &AppliedPatch) -> Result<RevertPlan> {
    let mut plan = RevertPlan::default();
    let mut rewritten: Vec<AppliedPatch> = Vec::new();
    for f in &patch.functions {
        let saved = bytes_of(patch, f, "saved")?;
        let written = bytes_of(patch, f, "written")?;
        let links = chain(applied, f.address);
        let position = links
            .iter()
            .position(|(p, _)| p.id == patch.id)
            .ok_or_else(|| failed!("patch {} is not in the chain of '{}'", patch.id, f.name))?;
        match links.get(position + 1) {
            None => plan.entries.push(EntryWrite {
                name: f.name.clone(),
                at: f.jump_at,
                expect: written,
                bytes: saved,
            }),
            Some((next, next_f)) => {
                if bytes_of(next, next_f, "saved")? != written {
                    return Err(refused!(
                        "function '{}': patch {} did not stack on patch {}; not reverting",
                        f.name,
                        next.id,
                        patch.id
                    ));
                }
                let header = match rewritten.iter_mut().find(|h| h.id == next.id) {
                    Some(h) => h,
                    None => {
                        rewritten.push((*next).clone());
                        rewritten.last_mut().expect("just pushed")
                    }
                };
                for g in header
                    .functions
                    .iter_mut()
                    .filter(|g| g.address == f.address)
                {
                    g.saved = hex(&saved);
                }
            }
        }
    }
    for new in rewritten {
        let old = applied
            .iter()
            .find(|p| p.id == new.id)
            .expect("rewritten from applied");
        let (old_bytes, new_bytes) = (state::encode(old), state::encode(&new));
        // `saved` always has the jump's length, so the encoding keeps its length; it must never
        // grow past what the patch reserved for it.
        if new_bytes.len() != old_bytes.len() {
            return Err(failed!(
                "state header of patch {} would change size on rewrite",
                new.id
            ));
        }
        plan.headers.push(HeaderRewrite {
            id: new.id.clone(),
            at: new.region_start,
            old: old_bytes,
            new: new_bytes,
        });
    }
    Ok(plan)
}

/// With every thread stopped: check every expectation first, then write; on a failed write put
/// back what was written. A mismatch is a refusal and changes nothing.
pub fn write_all(memory: &Memory, entries: &[EntryWrite], headers: &[HeaderRewrite]) -> Result<()> {
    for e in entries {
        if memory.read(e.at, e.expect.len())? != e.expect {
            return Err(refused!(
                "function '{}' at {:#x} no longer holds the expected bytes; nothing changed",
                e.name,
                e.at
            ));
        }
    }
    for h in headers {
        if memory.read(h.at, h.old.len())? != h.old {
            return Err(refused!(
                "state header of patch {} changed meanwhile; nothing changed",
                h.id
            ));
        }
    }
    let mut done_entries = 0;
    let mut done_headers = 0;
    let result = (|| {
        for e in entries {
            memory.write(e.at, &e.bytes)?;
            done_entries += 1;
        }
        for h in headers {
            memory.write(h.at, &h.new)?;
            done_headers += 1;
        }
        Ok(())
    })();
    if result.is_err() {
        for e in &entries[..done_entries] {
            let _ = memory.write(e.at, &e.expect);
        }
        for h in &headers[..done_headers] {
            let _ = memory.write(h.at, &h.old);
        }
    }
    result
}

/// Zero the magic of each header, so no reader takes the region for an applied patch.
pub fn retire(memory: &Memory, patches: &[AppliedPatch]) -> Result<()> {
    for p in patches {
        memory.write(p.region_start, &[0; STATE_MAGIC.len()])?;
    }
    Ok(())
}

/// For `--replace`: the entries of functions redirected by earlier patches but not by the new
/// one, which get their original bytes back (`expect` is the top patch's jump).
pub fn restores_for_replace(
    applied: &[AppliedPatch],
    replaced_addresses: &[u64],
) -> Result<Vec<EntryWrite>> {
    let mut out: Vec<EntryWrite> = Vec::new();
    for p in applied {
        for f in &p.functions {
            if replaced_addresses.contains(&f.address) || out.iter().any(|e| e.at == f.jump_at) {
                continue;
            }
            let links = chain(applied, f.address);
            let (first, first_f) = links.first().expect("f is in its own chain");
            let (top, top_f) = links.last().expect("f is in its own chain");
            out.push(EntryWrite {
                name: f.name.clone(),
                at: f.jump_at,
                expect: bytes_of(top, top_f, "written")?,
                bytes: bytes_of(first, first_f, "saved")?,
            });
        }
    }
    Ok(out)
}

/// Which patch each redirected function runs now: (function name, address, sequence, id) of the
/// top of each chain, in address order.
pub fn active(applied: &[AppliedPatch]) -> Vec<(String, u64, u64, String)> {
    let mut out: Vec<(String, u64, u64, String)> = Vec::new();
    for p in applied {
        for f in &p.functions {
            match out.iter_mut().find(|a| a.1 == f.address) {
                Some(a) if a.2 < p.sequence => {
                    *a = (f.name.clone(), f.address, p.sequence, p.id.clone())
                }
                Some(_) => {}
                None => out.push((f.name.clone(), f.address, p.sequence, p.id.clone())),
            }
        }
    }
    out.sort_by_key(|a| a.1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(id: &str, sequence: u64, saved: &str, written: &str) -> AppliedPatch {
        AppliedPatch {
            id: id.into(),
            name: id.into(),
            sequence,
            applied_at: 0,
            target_object: "/bin/x".into(),
            region_start: 0x1000 * sequence,
            region_size: 0x1000,
            functions: vec![AppliedFunction {
                name: "f".into(),
                address: 0x400000,
                jump_at: 0x400004,
                new_address: 0x1000 * sequence + 0x800,
                saved: saved.into(),
                written: written.into(),
            }],
        }
    }

    fn stack() -> Vec<AppliedPatch> {
        vec![
            patch("a", 1, "0102030405", "e911111111"),
            patch("b", 2, "e911111111", "e922222222"),
            patch("c", 3, "e922222222", "e933333333"),
        ]
    }

    #[test]
    fn original_bytes_come_from_the_earliest_patch() {
        let running = [0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0x33, 0x33, 0x33, 0x33, 0xc3];
        let original = original_bytes(&stack(), 0x400000, &running).unwrap();
        assert_eq!(original, [0xf3, 0x0f, 0x1e, 0xfa, 1, 2, 3, 4, 5, 0xc3]);
    }

    #[test]
    fn reverting_the_top_restores_the_previous_jump() {
        let applied = stack();
        let plan = plan_revert(&applied, &applied[2]).unwrap();
        assert!(plan.headers.is_empty());
        assert_eq!(plan.entries[0].expect, unhex("e933333333").unwrap());
        assert_eq!(plan.entries[0].bytes, unhex("e922222222").unwrap());
    }

    #[test]
    fn reverting_the_middle_relinks_the_next_header() {
        let applied = stack();
        let plan = plan_revert(&applied, &applied[1]).unwrap();
        assert!(plan.entries.is_empty());
        assert_eq!(plan.headers.len(), 1);
        assert_eq!(plan.headers[0].id, "c");
        let new = state::decode(&plan.headers[0].new).unwrap();
        assert_eq!(new.functions[0].saved, "e911111111");
        let plan = plan_revert(&applied, &applied[0]).unwrap();
        let new = state::decode(&plan.headers[0].new).unwrap();
        assert_eq!(plan.headers[0].id, "b");
        assert_eq!(new.functions[0].saved, "0102030405");
    }

    #[test]
    fn replace_restores_only_functions_the_new_patch_leaves_out() {
        let applied = stack();
        assert!(restores_for_replace(&applied, &[0x400000])
            .unwrap()
            .is_empty());
        let restores = restores_for_replace(&applied, &[]).unwrap();
        assert_eq!(restores.len(), 1);
        assert_eq!(restores[0].expect, unhex("e933333333").unwrap());
        assert_eq!(restores[0].bytes, unhex("0102030405").unwrap());
        assert_eq!(active(&applied)[0].3, "c");
    }
}

//! Finding the patches applied to a process, from any later invocation: every anonymous read-only
//! mapping whose first bytes are a state header (`ulp_runtime::state`) is a patch region.

use ulp_runtime::state::{self, AppliedPatch, STATE_PREFIX_LEN};

use crate::maps::Mapping;
use crate::memory::Memory;

/// The applied patches, by increasing sequence number.
pub fn applied(maps: &[Mapping], memory: &Memory) -> Vec<AppliedPatch> {
    let mut out: Vec<AppliedPatch> = maps
        .iter()
        .filter(|m| m.is_anonymous() && m.read && !m.write && !m.execute && m.private)
        .filter_map(|m| {
            let prefix = memory.read(m.start, STATE_PREFIX_LEN).ok()?;
            let total = state::header_len(&prefix).ok()?;
            let bytes = memory.read(m.start, total).ok()?;
            let header = state::decode(&bytes).ok()?;
            (header.region_start == m.start).then_some(header)
        })
        .collect();
    out.sort_by_key(|p| p.sequence);
    out
}

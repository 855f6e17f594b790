//! Choosing where the patch region goes: free address space within `rel32` reach (±2 GiB) of the
//! executable, below 2 GiB when the patch holds absolute 32-bit addresses of itself, never directly
//! after `[heap]` (so `brk` can grow), with a free guard page on each side (so the kernel never merges
//! the region's mappings with a neighbour's). The gap just below the executable comes first.

use crate::maps::Mapping;

const PAGE: u64 = 4096;
/// Lowest address considered (above `vm.mmap_min_addr` everywhere).
const MIN_ADDRESS: u64 = 1 << 20;
/// Top of the x86_64 user address space with 4-level paging.
const MAX_ADDRESS: u64 = 0x7fff_ffff_f000;
/// `rel32` reach, minus a page of slack.
const REACH: u64 = (1 << 31) - PAGE;
/// Room left for `brk` above `[heap]`.
const HEAP_ROOM: u64 = 1 << 30;
/// Absolute 32-bit addresses (`R_X86_64_32`/`32S`) must stay below this.
const LOW_LIMIT: u64 = 1 << 31;

/// Candidate region bases for `size` bytes, best first. `near` is the executable's `[start, end)`.
pub fn candidates(maps: &[Mapping], near: (u64, u64), size: u64, low: bool) -> Vec<u64> {
    let (lo, hi) = near;
    let mut sorted: Vec<&Mapping> = maps.iter().collect();
    sorted.sort_by_key(|m| m.start);
    // Free gaps, each with whether it starts right after the heap.
    let mut gaps = Vec::new();
    let mut previous_end = MIN_ADDRESS;
    let mut after_heap = false;
    for m in &sorted {
        if m.start > previous_end {
            gaps.push((previous_end, m.start, after_heap));
        }
        previous_end = previous_end.max(m.end);
        after_heap = m.path.as_deref() == Some("[heap]");
    }
    if MAX_ADDRESS > previous_end {
        gaps.push((previous_end, MAX_ADDRESS, after_heap));
    }

    let reach_low = hi.saturating_sub(REACH);
    let reach_high = lo.saturating_add(REACH);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end, after_heap) in gaps {
        let mut first = start + PAGE;
        if after_heap {
            first = first.saturating_add(HEAP_ROOM);
        }
        let mut last_end = end.saturating_sub(PAGE).min(reach_high);
        if low {
            last_end = last_end.min(LOW_LIMIT);
        }
        first = first.max(reach_low);
        if last_end < first || last_end - first < size {
            continue;
        }
        let top = (last_end - size) & !(PAGE - 1);
        let bottom = first.div_ceil(PAGE) * PAGE;
        if top < bottom {
            continue;
        }
        // Closest to the executable: the top of a gap below it, the bottom of a gap above it.
        let base = if top + size <= lo { top } else { bottom };
        let distance = if base + size <= lo {
            lo - (base + size)
        } else {
            base.saturating_sub(hi)
        };
        out.push((distance, base));
    }
    out.sort();
    out.into_iter().map(|(_, base)| base).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::parse_line;

    fn maps(lines: &[&str]) -> Vec<Mapping> {
        lines.iter().map(|l| parse_line(l).unwrap()).collect()
    }

    #[test]
    fn prefers_the_gap_just_below_the_executable() {
        let m = maps(&[
            "555555554000-555555556000 r-xp 00000000 08:01 1 /bin/prog",
            "555555556000-555555578000 rw-p 00000000 00:00 0 [heap]",
            "7ffff7dd0000-7ffff7df0000 r-xp 00000000 08:01 2 /lib/libc.so.6",
        ]);
        let c = candidates(&m, (0x555555554000, 0x555555556000), 0x3000, false);
        assert_eq!(c[0], 0x555555554000 - PAGE - 0x3000);
    }

    #[test]
    fn low_patches_stay_below_two_gib_and_reach_the_executable() {
        let m = maps(&["00400000-00402000 r-xp 00000000 08:01 1 /bin/prog"]);
        let c = candidates(&m, (0x400000, 0x402000), 0x2000, true);
        assert!(!c.is_empty());
        assert!(c.iter().all(|&b| b + 0x2000 <= LOW_LIMIT));
    }

    #[test]
    fn never_directly_after_the_heap() {
        let m = maps(&[
            "00400000-00402000 r-xp 00000000 08:01 1 /bin/prog",
            "00402000-00500000 rw-p 00000000 00:00 0 [heap]",
        ]);
        let c = candidates(&m, (0x400000, 0x402000), 0x2000, false);
        assert!(c
            .iter()
            .all(|&b| !(0x500000..0x500000 + HEAP_ROOM).contains(&b)));
    }
}

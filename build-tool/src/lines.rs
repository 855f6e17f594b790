//! `__LINE__`-only changes. An edit above a function that passes `__LINE__` to a macro (`assert`, a
//! logging macro) shifts the line-number immediates in its code without changing what it does. Such a
//! function is no change when every instruction that differs differs only in immediate operands, and
//! each old immediate is a line of OLD that the line diff of the two sources (similar) maps to the new
//! immediate. To not hide a real change, the numbers involved must not be written in the edited lines
//! of the sources (`x + 10` → `x + 11` with line 10 moving to 11 is a change).

use std::collections::{BTreeMap, BTreeSet};

use iced_x86::{Decoder, DecoderOptions};
use similar::{ChangeTag, DiffTag, TextDiff};

/// How the lines of OLD map to those of NEW.
#[derive(Debug, Clone, Default)]
pub struct LineMap {
    /// OLD line (1-based) → NEW line, for lines the edit left in place.
    pub map: BTreeMap<u64, u64>,
    /// Decimal numbers written in lines the edit removed or inserted.
    pub edited_numbers: BTreeSet<u64>,
}

impl LineMap {
    /// The line mapping between two source texts.
    pub fn new(old: &str, new: &str) -> LineMap {
        let diff = TextDiff::from_lines(old, new);
        let mut result = LineMap::default();
        for op in diff.ops() {
            if op.tag() == DiffTag::Equal {
                let (o, n) = (op.old_range(), op.new_range());
                for k in 0..o.len() {
                    result
                        .map
                        .insert((o.start + k + 1) as u64, (n.start + k + 1) as u64);
                }
            }
            for change in diff.iter_changes(op) {
                if change.tag() != ChangeTag::Equal {
                    for word in change
                        .value()
                        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    {
                        if let Ok(v) = word.parse::<u64>() {
                            result.edited_numbers.insert(v);
                        }
                    }
                }
            }
        }
        result
    }

    /// Whether immediate `old` of OLD's code becoming `new` is only a shifted line number.
    pub fn is_line_shift(&self, old: u64, new: u64) -> bool {
        old != new
            && self.map.get(&old) == Some(&new)
            && !self.edited_numbers.contains(&old)
            && !self.edited_numbers.contains(&new)
    }
}

/// Whether the two functions (bytes with relocation fields zeroed) differ only in immediates that are
/// shifted line numbers, with at least one such difference.
pub fn only_line_shifts(old: &[u8], new: &[u8], lines: &LineMap) -> bool {
    if old.len() != new.len() || old == new {
        return false;
    }
    let mut old_decoder = Decoder::with_ip(64, old, 0, DecoderOptions::NONE);
    let mut new_decoder = Decoder::with_ip(64, new, 0, DecoderOptions::NONE);
    while old_decoder.can_decode() {
        if !new_decoder.can_decode() {
            return false;
        }
        let (a, b) = (old_decoder.decode(), new_decoder.decode());
        if a.len() != b.len() || a.ip() != b.ip() {
            return false;
        }
        let range = a.ip() as usize..a.next_ip() as usize;
        let (x, y) = (&old[range.clone()], &new[range]);
        if x == y {
            continue;
        }
        if a.code() != b.code() || a.is_invalid() {
            return false;
        }
        let (ca, cb) = (
            old_decoder.get_constant_offsets(&a),
            new_decoder.get_constant_offsets(&b),
        );
        let immediates = [
            (
                ca.has_immediate(),
                ca.immediate_offset(),
                ca.immediate_size(),
            ),
            (
                ca.has_immediate2(),
                ca.immediate_offset2(),
                ca.immediate_size2(),
            ),
        ];
        if (
            ca.has_immediate(),
            ca.immediate_offset(),
            ca.immediate_size(),
        ) != (
            cb.has_immediate(),
            cb.immediate_offset(),
            cb.immediate_size(),
        ) {
            return false;
        }
        // Outside the immediates the instructions must be identical.
        let mut patched = x.to_vec();
        for &(has, offset, size) in &immediates {
            if !has {
                continue;
            }
            let field = offset..offset + size;
            let value = |bytes: &[u8]| {
                bytes[field.clone()]
                    .iter()
                    .rev()
                    .fold(0u64, |v, &byte| v << 8 | u64::from(byte))
            };
            let (old_value, new_value) = (value(x), value(y));
            if old_value != new_value && !lines.is_line_shift(old_value, new_value) {
                return false;
            }
            patched[field.clone()].copy_from_slice(&y[field]);
        }
        if patched != y {
            return false;
        }
    }
    !new_decoder.can_decode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_unchanged_lines_and_records_edited_numbers() {
        let map = LineMap::new("a\nb 7\nc\n", "a\nx\ny 9\nc\n");
        assert_eq!(map.map.get(&1), Some(&1));
        assert_eq!(map.map.get(&3), Some(&4));
        assert!(!map.map.contains_key(&2));
        assert!(map.edited_numbers.contains(&7) && map.edited_numbers.contains(&9));
        assert!(map.is_line_shift(3, 4));
        assert!(!map.is_line_shift(1, 1));
    }

    #[test]
    fn immediate_line_shift_is_recognised_and_other_changes_are_not() {
        let map = LineMap::new("1\n2\n3\n", "0\n1\n2\n3\n");
        // mov esi, 3 → mov esi, 4
        assert!(only_line_shifts(
            &[0xbe, 3, 0, 0, 0],
            &[0xbe, 4, 0, 0, 0],
            &map
        ));
        // mov esi, 3 → mov edi, 4: a register changed too.
        assert!(!only_line_shifts(
            &[0xbe, 3, 0, 0, 0],
            &[0xbf, 4, 0, 0, 0],
            &map
        ));
        // mov esi, 3 → mov esi, 5: 3 maps to 4, not 5.
        assert!(!only_line_shifts(
            &[0xbe, 3, 0, 0, 0],
            &[0xbe, 5, 0, 0, 0],
            &map
        ));
    }
}

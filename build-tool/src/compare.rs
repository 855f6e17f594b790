//! Comparison of a correlated function or data object: its bytes with relocation fields zeroed, and its
//! relocations pairwise by offset, type and *meaning* of the target — the symbol name for named
//! symbols, the string content for string literals (so a literal that only moved is no change).

use std::fmt;

use ulp_runtime::x86_64::relocation_field_size;

use crate::correlate::{is_special_static, Correlation};
use crate::lines::{only_line_shifts, LineMap};
use crate::object_model::{ObjectModel, Reloc, Symbol, Target};

/// What a relocation refers to, independent of where things were placed in the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// A named symbol, at `place` bytes from its start.
    Symbol { name: String, place: i64 },
    /// A string literal (bytes up to its NUL), in a `SHF_MERGE | SHF_STRINGS` section.
    String(Vec<u8>),
    /// A constant in a mergeable section, or a GCC special static, by content.
    Constant { bytes: Vec<u8>, place: i64 },
    /// A place in a section no named symbol covers (jump tables and other anonymous constants), by
    /// the content of the item there.
    Anonymous { section: String, bytes: Vec<u8> },
    /// No symbol.
    Absolute(i64),
}

impl fmt::Display for Meaning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Meaning::Symbol { name, place: 0 } => write!(f, "'{name}'"),
            Meaning::Symbol { name, place } => write!(f, "'{name}'{place:+}"),
            Meaning::String(s) => write!(f, "string {:?}", String::from_utf8_lossy(s)),
            Meaning::Constant { .. } => write!(f, "a different constant"),
            Meaning::Anonymous { section, bytes } => {
                let text = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
                if !text.is_empty() && text.iter().all(|b| b.is_ascii_graphic() || b == &b' ') {
                    write!(f, "string {:?}", String::from_utf8_lossy(text))
                } else {
                    write!(f, "a different constant in {section}")
                }
            }
            Meaning::Absolute(v) => write!(f, "absolute {v:#x}"),
        }
    }
}

/// A relocation inside a symbol: offset relative to the symbol, type, and meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeaningfulReloc {
    pub offset: u64,
    pub r_type: u32,
    pub meaning: Meaning,
}

/// The meaning of `reloc` (a relocation of `object`, with PC bias `bias`).
pub fn meaning(object: &ObjectModel, reloc: &Reloc, bias: i64) -> Meaning {
    let resolved = object.resolve(reloc, bias);
    match resolved.target {
        Target::Symbol(s) => {
            let symbol = &object.symbols[s];
            if is_special_static(&symbol.name) {
                Meaning::Constant {
                    bytes: object.symbol_bytes(symbol),
                    place: resolved.place,
                }
            } else {
                Meaning::Symbol {
                    name: symbol.name.clone(),
                    place: resolved.place,
                }
            }
        }
        Target::Section(s) => {
            let section = &object.sections[s];
            let place = resolved.place.max(0) as usize;
            if section.is_merge_strings() {
                let width = section.sh_entsize.max(1) as usize;
                let tail = section.data.get(place..).unwrap_or(&[]);
                let end = tail
                    .chunks(width)
                    .position(|c| c.iter().all(|&b| b == 0))
                    .map_or(tail.len(), |i| i * width);
                Meaning::String(tail[..end].to_vec())
            } else if section.is_merge() {
                let width = section.sh_entsize.max(1);
                let start = place as u64 / width * width;
                Meaning::Constant {
                    bytes: section.bytes(start, width),
                    place: place as i64 - start as i64,
                }
            } else {
                Meaning::Anonymous {
                    section: section.name.clone(),
                    bytes: object.anonymous_item(s, resolved.place),
                }
            }
        }
        Target::Absolute => Meaning::Absolute(resolved.addend),
    }
}

/// The relocations inside `symbol`, with meanings, sorted by offset.
pub fn relocations_of(object: &ObjectModel, symbol: &Symbol) -> Vec<MeaningfulReloc> {
    let Some(s) = symbol.section else {
        return Vec::new();
    };
    let section = &object.sections[s];
    let biases = object.pc_biases(s);
    let end = symbol.value + symbol.size.max(1);
    section
        .relocations
        .iter()
        .zip(biases)
        .filter(|(r, _)| r.offset >= symbol.value && r.offset < end)
        .map(|(r, bias)| MeaningfulReloc {
            offset: r.offset - symbol.value,
            r_type: r.r_type,
            meaning: meaning(object, r, bias),
        })
        .collect()
}

/// Bytes of `symbol` with every relocation field zeroed.
pub fn masked_bytes(object: &ObjectModel, symbol: &Symbol) -> Vec<u8> {
    let mut bytes = object.symbol_bytes(symbol);
    for reloc in object.symbol_relocations(symbol) {
        let start = (reloc.offset as usize).min(bytes.len());
        let width = relocation_field_size(reloc.r_type).unwrap_or(4);
        let end = (start + width).min(bytes.len());
        bytes[start..end].fill(0);
    }
    bytes
}

/// Why `new_symbol` differs from `old_symbol`, or `None` if they are the same (symbols compared by
/// their exact names; see [`difference_in`]).
pub fn difference(
    old: &ObjectModel,
    old_symbol: &Symbol,
    new: &ObjectModel,
    new_symbol: &Symbol,
) -> Option<String> {
    difference_in(
        old,
        old_symbol,
        new,
        new_symbol,
        &Correlation::default(),
        None,
    )
}

/// Why `new_symbol` differs from `old_symbol`, or `None` if they are the same. Symbols NEW's
/// relocations refer to are named as OLD names them (`correlation.renames`: a call to a renumbered
/// clone is no change); with `lines`, code that differs only in shifted `__LINE__` immediates is the
/// same.
pub fn difference_in(
    old: &ObjectModel,
    old_symbol: &Symbol,
    new: &ObjectModel,
    new_symbol: &Symbol,
    correlation: &Correlation,
    lines: Option<&LineMap>,
) -> Option<String> {
    let old_bytes = masked_bytes(old, old_symbol);
    let new_bytes = masked_bytes(new, new_symbol);
    if let Some(at) = old_bytes.iter().zip(&new_bytes).position(|(a, b)| a != b) {
        let line_shift = lines.is_some_and(|l| {
            new.symbol_is_code(new_symbol) && only_line_shifts(&old_bytes, &new_bytes, l)
        });
        if !line_shift {
            return Some(format!("bytes differ at +{at:#x}"));
        }
    }
    if old_bytes.len() != new_bytes.len() {
        return Some(format!(
            "size changed from {} to {} bytes",
            old_bytes.len(),
            new_bytes.len()
        ));
    }
    let old_relocs = relocations_of(old, old_symbol);
    let mut new_relocs = relocations_of(new, new_symbol);
    for r in &mut new_relocs {
        if let Meaning::Symbol { name, .. } = &mut r.meaning {
            if let Some(o) = correlation.renames.get(name.as_str()) {
                *name = o.clone();
            }
        }
    }
    for (i, n) in new_relocs.iter().enumerate() {
        match old_relocs.get(i) {
            Some(o) if o == n => continue,
            Some(o) if o.offset == n.offset && o.r_type == n.r_type => {
                return Some(format!(
                    "relocation at +{:#x} now refers to {}",
                    n.offset, n.meaning
                ))
            }
            _ => {
                return Some(format!(
                    "relocation at +{:#x} to {} is new",
                    n.offset, n.meaning
                ))
            }
        }
    }
    if let Some(o) = old_relocs.get(new_relocs.len()) {
        return Some(format!(
            "relocation at +{:#x} to {} was removed",
            o.offset, o.meaning
        ));
    }
    None
}

/// The functions a patch must contain: those that exist in both objects but differ, and those only in
/// NEW. Symbol indices are NEW's.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Changed functions (NEW symbol → (OLD symbol, reason)); they replace the running ones.
    pub replaced: std::collections::BTreeMap<usize, (usize, String)>,
    /// Functions only in NEW.
    pub new_functions: std::collections::BTreeSet<usize>,
    /// NEW GCC clones that could not be paired with OLD's clones of the same name (refused): NEW
    /// symbol → OLD's unpaired clones.
    pub ambiguous: std::collections::BTreeMap<usize, Vec<usize>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.replaced.is_empty() && self.new_functions.is_empty()
    }
    /// Whether NEW function `symbol` goes into the patch as code of its own.
    pub fn carries(&self, symbol: usize) -> bool {
        self.replaced.contains_key(&symbol) || self.new_functions.contains(&symbol)
    }
}

/// For a GCC `.cold` part (`f.cold`, `f.part.0.cold`, `f.cold.1`), the name of its parent function.
pub fn cold_parent(name: &str) -> Option<&str> {
    if let Some(parent) = name.strip_suffix(".cold") {
        return Some(parent);
    }
    let (head, number) = name.rsplit_once('.')?;
    if number.chars().all(|c| c.is_ascii_digit()) {
        return head.strip_suffix(".cold");
    }
    None
}

/// Compare every correlated function. A changed `.cold` part marks its parent changed instead of being
/// replaced itself (it is only ever entered from its parent, and is carried along with it). When both
/// objects carry their source text, `__LINE__`-only shifts are no change.
pub fn find_changes(old: &ObjectModel, new: &ObjectModel, correlation: &Correlation) -> Changes {
    let lines = match (&old.source_text, &new.source_text) {
        (Some(o), Some(n)) => Some(LineMap::new(o, n)),
        _ => None,
    };
    let mut changes = Changes::default();
    let mut changed_cold = Vec::new();
    for pair in &correlation.functions {
        let new_symbol = &new.symbols[pair.new];
        let Some(old_index) = pair.old else {
            changes.new_functions.insert(pair.new);
            continue;
        };
        let Some(reason) = difference_in(
            old,
            &old.symbols[old_index],
            new,
            new_symbol,
            correlation,
            lines.as_ref(),
        ) else {
            continue;
        };
        if let Some(parent) = cold_parent(&new_symbol.name) {
            changed_cold.push((parent.to_string(), old.symbols[old_index].name.clone()));
        } else {
            changes.replaced.insert(pair.new, (old_index, reason));
        }
    }
    for (parent, child) in changed_cold {
        let Some(parent_new) = new.symbol_by_name(&parent).filter(|s| s.is_function()) else {
            continue;
        };
        match correlation.old_of(parent_new.index) {
            Some(parent_old) => {
                changes
                    .replaced
                    .entry(parent_new.index)
                    .or_insert_with(|| (parent_old, format!("its part '{child}' changed")));
            }
            None => {
                changes.new_functions.insert(parent_new.index);
            }
        }
    }
    changes.ambiguous = correlation.ambiguous.clone();
    changes
}

//! Correlation: which function or data object of NEW is which one of OLD. For now symbols are paired
//! by exact name (static locals are `name.N` and pair by exact name too); GCC clone renames with
//! differing numbers are not paired (see `refuse`).

use crate::object_model::ObjectModel;

/// A function or data object of NEW and its counterpart in OLD, if any (symbol indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub new: usize,
    pub old: Option<usize>,
}

/// All functions and data objects of NEW, paired with OLD.
#[derive(Debug, Clone, Default)]
pub struct Correlation {
    /// `STT_FUNC` symbols defined in NEW, sorted by name.
    pub functions: Vec<Pair>,
    /// `STT_OBJECT`/`STT_TLS` symbols defined (or common) in NEW, sorted by name.
    pub data: Vec<Pair>,
}

impl Correlation {
    /// The OLD counterpart of NEW symbol `new`.
    pub fn old_of(&self, new: usize) -> Option<usize> {
        self.functions
            .iter()
            .chain(&self.data)
            .find(|p| p.new == new)
            .and_then(|p| p.old)
    }
}

/// Special statics GCC generates and numbers itself: never paired, always carried when used.
pub fn is_special_static(name: &str) -> bool {
    [
        "__func__.",
        "__PRETTY_FUNCTION__.",
        "__FUNCTION__.",
        "CSWTCH.",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// Pair the functions and data objects of `new` with those of `old` by name.
pub fn correlate(old: &ObjectModel, new: &ObjectModel) -> Correlation {
    let mut correlation = Correlation::default();
    for symbol in &new.symbols {
        if !symbol.is_named() {
            continue;
        }
        let counterpart = |want_function: bool| {
            if is_special_static(&symbol.name) {
                return None;
            }
            old.symbol_by_name(&symbol.name)
                .filter(|o| {
                    if want_function {
                        o.is_function()
                    } else {
                        o.is_data()
                    }
                })
                .map(|o| o.index)
        };
        if symbol.is_function() {
            correlation.functions.push(Pair {
                new: symbol.index,
                old: counterpart(true),
            });
        } else if symbol.is_data() {
            correlation.data.push(Pair {
                new: symbol.index,
                old: counterpart(false),
            });
        }
    }
    correlation
        .functions
        .sort_by(|a, b| new.symbols[a.new].name.cmp(&new.symbols[b.new].name));
    correlation
        .data
        .sort_by(|a, b| new.symbols[a.new].name.cmp(&new.symbols[b.new].name));
    correlation
}

/// Functions of OLD that NEW no longer defines, by name (sorted). GCC clones and `.cold` parts are left
/// out: they come and go with optimization, and the change of their caller is what matters.
pub fn removed_functions(old: &ObjectModel, new: &ObjectModel) -> Vec<String> {
    const CLONE_MARKERS: [&str; 4] = [".isra.", ".constprop.", ".part.", ".cold"];
    let mut names: Vec<String> = old
        .symbols
        .iter()
        .filter(|s| s.is_named() && s.is_function())
        .filter(|s| !CLONE_MARKERS.iter().any(|m| s.name.contains(m)))
        .filter(|s| new.symbol_by_name(&s.name).is_none_or(|n| !n.is_function()))
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

//! Correlation: which function or data object of NEW is which one of OLD.
//!
//! * Plain names (`parse`, `table`) pair by exact name.
//! * GCC clones and split parts (`f.isra.N`, `f.constprop.N`, `f.part.N`, `f.cold`, and combinations such
//!   as `f.constprop.0.isra.0` or `f.part.0.cold`) pair by their *key* — the name with every numeric
//!   component dropped (`f.constprop.isra`, `f.part.cold`) — because GCC's numbers are counters that an
//!   edit elsewhere can shift. Within one key, clones pair in order of their numbers when both objects
//!   have as many; otherwise the ones with identical code (relocation fields zeroed) pair first and the
//!   rest pair in order only if the counts then agree. A clone left without a partner while OLD still has
//!   unpaired clones of the same key is *ambiguous* and recorded for refusal.
//! * Static locals (`count.N`: a local data symbol whose name ends in a number) pair by base name and
//!   by the functions that reference them, mapped through the function pairing — so a static local that
//!   GCC renumbered is still the same variable, and the patch refers to it by its OLD name.
//! * Special statics (`__func__.N`, `__PRETTY_FUNCTION__.N`, `CSWTCH.N`, and the unnamed `.LC*`
//!   literals) are never paired: they are compared by content and carried.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::compare::masked_bytes;
use crate::object_model::{ObjectModel, Target};
use ulp_runtime::meta::Binding;

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
    /// NEW clones that could not be paired although OLD has unpaired clones of the same key (NEW
    /// symbol → those OLD symbols).
    pub ambiguous: BTreeMap<usize, Vec<usize>>,
    /// NEW name → OLD name, for every pair whose names differ (renumbered clones and static locals).
    pub renames: HashMap<String, String>,
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

    /// The name OLD has for the NEW symbol named `name` (the name itself when not renamed).
    pub fn old_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.renames.get(name).map_or(name, String::as_str)
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

/// Name markers of GCC clones and split-off parts.
pub const CLONE_MARKERS: [&str; 4] = [".isra", ".constprop", ".part", ".cold"];

/// Whether `name` is a GCC clone or split-off part (`f.isra.0`, `f.part.1.cold`, `f.cold`).
pub fn is_clone(name: &str) -> bool {
    name.split('.')
        .skip(1)
        .any(|c| CLONE_MARKERS.iter().any(|m| &m[1..] == c))
}

/// The correlation key of a GCC clone: its name without numeric components (`f.constprop.0.isra.1` →
/// `f.constprop.isra`).
pub fn clone_key(name: &str) -> String {
    name.split('.')
        .filter(|c| c.is_empty() || !c.chars().all(|ch| ch.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(".")
}

/// The numeric components of a clone's name, for ordering (`f.constprop.3.isra.0` → `[3, 0]`).
fn clone_numbers(name: &str) -> Vec<u64> {
    name.split('.').filter_map(|c| c.parse().ok()).collect()
}

/// For a static local `count.N`, its base name `count`.
pub fn static_local_base(object: &ObjectModel, index: usize) -> Option<&str> {
    let symbol = &object.symbols[index];
    if symbol.binding != Some(Binding::Local) || is_special_static(&symbol.name) {
        return None;
    }
    let (base, number) = symbol.name.rsplit_once('.')?;
    (!base.is_empty() && !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()))
        .then_some(base)
}

/// The functions of `object` whose code refers to symbol `target`.
pub fn users(object: &ObjectModel, target: usize) -> BTreeSet<usize> {
    user_map(object).remove(&target).unwrap_or_default()
}

/// For every symbol code refers to, the functions of `object` whose code refers to it (one pass).
pub fn user_map(object: &ObjectModel) -> HashMap<usize, BTreeSet<usize>> {
    let mut map: HashMap<usize, BTreeSet<usize>> = HashMap::new();
    for section in object.sections.iter().filter(|s| s.is_exec()) {
        let functions: Vec<usize> = object
            .symbols_in(section.index)
            .iter()
            .copied()
            .filter(|&f| object.symbols[f].is_function())
            .collect();
        let biases = object.pc_biases(section.index);
        for (reloc, bias) in section.relocations.iter().zip(biases) {
            let Target::Symbol(target) = object.resolve(reloc, bias).target else {
                continue;
            };
            if let Some(&f) = functions.iter().find(|&&f| {
                let s = &object.symbols[f];
                reloc.offset >= s.value && reloc.offset < s.value + s.size
            }) {
                map.entry(target).or_default().insert(f);
            }
        }
    }
    map
}

/// Pair `new_list` with `old_list` (symbols of one clone key).
fn pair_clones(
    old: &ObjectModel,
    new: &ObjectModel,
    mut old_list: Vec<usize>,
    mut new_list: Vec<usize>,
) -> Vec<(usize, Option<usize>)> {
    fn order(m: &ObjectModel, list: &mut [usize]) {
        list.sort_by_cached_key(|&a| {
            (clone_numbers(&m.symbols[a].name), m.symbols[a].name.clone())
        });
    }
    order(old, &mut old_list);
    order(new, &mut new_list);
    if old_list.len() == new_list.len() {
        return new_list
            .into_iter()
            .zip(old_list.into_iter().map(Some))
            .collect();
    }
    // Different counts: identical code pairs first.
    let mut result = Vec::new();
    let mut rest_new = Vec::new();
    for n in new_list {
        let bytes = masked_bytes(new, &new.symbols[n]);
        match old_list
            .iter()
            .position(|&o| masked_bytes(old, &old.symbols[o]) == bytes)
        {
            Some(at) => result.push((n, Some(old_list.remove(at)))),
            None => rest_new.push(n),
        }
    }
    if rest_new.len() == old_list.len() {
        result.extend(rest_new.into_iter().zip(old_list.into_iter().map(Some)));
    } else {
        result.extend(rest_new.into_iter().map(|n| (n, None)));
    }
    result
}

/// Pair the functions and data objects of `new` with those of `old`.
pub fn correlate(old: &ObjectModel, new: &ObjectModel) -> Correlation {
    let mut correlation = Correlation::default();

    // Functions: plain names exactly, clones by key.
    let mut old_clones: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for symbol in old
        .symbols
        .iter()
        .filter(|s| s.is_named() && s.is_function())
    {
        if is_clone(&symbol.name) {
            old_clones
                .entry(clone_key(&symbol.name))
                .or_default()
                .push(symbol.index);
        }
    }
    let mut new_clones: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for symbol in new
        .symbols
        .iter()
        .filter(|s| s.is_named() && s.is_function())
    {
        if is_clone(&symbol.name) {
            new_clones
                .entry(clone_key(&symbol.name))
                .or_default()
                .push(symbol.index);
        } else {
            let old_index = old
                .symbol_by_name(&symbol.name)
                .filter(|o| o.is_function())
                .map(|o| o.index);
            correlation.functions.push(Pair {
                new: symbol.index,
                old: old_index,
            });
        }
    }
    for (key, new_list) in new_clones {
        let old_list = old_clones.remove(&key).unwrap_or_default();
        let pairs = pair_clones(old, new, old_list.clone(), new_list);
        let paired: BTreeSet<usize> = pairs.iter().filter_map(|p| p.1).collect();
        let left: Vec<usize> = old_list
            .into_iter()
            .filter(|o| !paired.contains(o))
            .collect();
        for (n, o) in pairs {
            if o.is_none() && !left.is_empty() {
                correlation.ambiguous.insert(n, left.clone());
            }
            correlation.functions.push(Pair { new: n, old: o });
        }
    }
    let function_map: HashMap<usize, usize> = correlation
        .functions
        .iter()
        .filter_map(|p| Some((p.new, p.old?)))
        .collect();

    // Data: exact names, static locals by the functions that use them.
    let mut claimed = BTreeSet::new();
    let mut locals = Vec::new();
    for symbol in new.symbols.iter().filter(|s| s.is_named() && s.is_data()) {
        if is_special_static(&symbol.name) {
            correlation.data.push(Pair {
                new: symbol.index,
                old: None,
            });
        } else if static_local_base(new, symbol.index).is_some() {
            locals.push(symbol.index);
        } else {
            let old_index = old
                .symbol_by_name(&symbol.name)
                .filter(|o| o.is_data())
                .map(|o| o.index);
            claimed.extend(old_index);
            correlation.data.push(Pair {
                new: symbol.index,
                old: old_index,
            });
        }
    }
    let mut old_locals: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for symbol in old.symbols.iter().filter(|s| s.is_named() && s.is_data()) {
        if let Some(base) = static_local_base(old, symbol.index) {
            old_locals.entry(base).or_default().push(symbol.index);
        }
    }
    // Most specific first: a static local whose users map exactly to an OLD one's users.
    let mut pending = Vec::new();
    let (old_users, new_users) = if locals.is_empty() {
        Default::default()
    } else {
        (user_map(old), user_map(new))
    };
    let used_by = |map: &HashMap<usize, BTreeSet<usize>>, s: usize| -> BTreeSet<usize> {
        map.get(&s).cloned().unwrap_or_default()
    };
    for n in locals {
        let base = static_local_base(new, n).unwrap_or_default();
        let expected: BTreeSet<usize> = used_by(&new_users, n)
            .iter()
            .filter_map(|f| function_map.get(f).copied())
            .collect();
        let candidates = old_locals.get(base).cloned().unwrap_or_default();
        let scored: Vec<(usize, usize, bool)> = candidates
            .iter()
            .map(|&o| {
                let used_by = users(old, o);
                (
                    o,
                    used_by.intersection(&expected).count(),
                    used_by == expected,
                )
            })
            .collect();
        pending.push((n, scored));
    }
    for exact_round in [true, false] {
        for (n, scored) in &mut pending {
            if scored.is_empty() {
                continue;
            }
            let best = scored
                .iter()
                .filter(|(o, common, exact)| {
                    !claimed.contains(o) && *common > 0 && (*exact || !exact_round)
                })
                .max_by_key(|(o, common, exact)| (*exact, *common, std::cmp::Reverse(*o)))
                .map(|c| c.0);
            if let Some(o) = best {
                claimed.insert(o);
                correlation.data.push(Pair {
                    new: *n,
                    old: Some(o),
                });
                scored.clear();
                *n = usize::MAX;
            }
        }
    }
    // Static locals no function tells apart (unused, or only in data): same name, else new.
    for (n, _) in pending.into_iter().filter(|(n, _)| *n != usize::MAX) {
        let old_index = old
            .symbol_by_name(&new.symbols[n].name)
            .filter(|o| o.is_data() && !claimed.contains(&o.index))
            .filter(|o| {
                used_by(&old_users, o.index).is_empty() && used_by(&new_users, n).is_empty()
            })
            .map(|o| o.index);
        claimed.extend(old_index);
        correlation.data.push(Pair {
            new: n,
            old: old_index,
        });
    }

    for pair in correlation.functions.iter().chain(&correlation.data) {
        if let Some(o) = pair.old {
            let (n, o) = (&new.symbols[pair.new].name, &old.symbols[o].name);
            if n != o {
                correlation.renames.insert(n.clone(), o.clone());
            }
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
    let mut names: Vec<String> = old
        .symbols
        .iter()
        .filter(|s| s.is_named() && s.is_function())
        .filter(|s| !is_clone(&s.name))
        .filter(|s| new.symbol_by_name(&s.name).is_none_or(|n| !n.is_function()))
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_keys_ignore_numbers() {
        assert_eq!(clone_key("f.constprop.0.isra.0"), "f.constprop.isra");
        assert_eq!(clone_key("f.part.12.cold"), "f.part.cold");
        assert_eq!(clone_key("f.cold"), "f.cold");
        assert_eq!(clone_key("f.isra.3"), clone_key("f.isra.0"));
        assert!(is_clone("f.part.0.cold") && is_clone("f.cold.1") && is_clone("g.isra.2"));
        assert!(!is_clone("count.1") && !is_clone("main") && !is_clone("f.localalias"));
        assert_eq!(clone_numbers("f.constprop.3.isra.1"), vec![3, 1]);
    }
}

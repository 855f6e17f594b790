//! Emission: turns the carried sections, the external references and the replaced functions into a
//! [`ulp_runtime::Patch`]. Everything is sorted so that the same inputs give the same patch (and so,
//! through `ulp_runtime::write_patch`, byte-identical files).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use ulp_runtime::hash::masked_hash;
use ulp_runtime::meta::{Binding, ReplacedFunction, TargetSymbol};
use ulp_runtime::patch::{
    RelocTarget, Relocation, Section, SectionKind, Symbol as PatchSymbol, SymbolKind,
};
use ulp_runtime::x86_64::linker_rewritten_bytes;
use ulp_runtime::{Meta, Patch};

use crate::closure::{Closure, Decision};
use crate::compare::Changes;
use crate::correlate::is_special_static;
use crate::object_model::{ObjectModel, Symbol, SymbolType};

/// The running program's symbol that NEW symbol `symbol` refers to: its OLD definition when there is
/// one (binding as the running program has it), else an undefined symbol of NEW.
pub fn target_symbol(old: &ObjectModel, symbol: &Symbol) -> TargetSymbol {
    let binding = old
        .symbol_by_name(&symbol.name)
        .filter(|o| !o.undefined)
        .and_then(|o| o.binding)
        .or(symbol.binding)
        .unwrap_or(Binding::Global);
    TargetSymbol {
        name: symbol.name.clone(),
        binding,
        file: (binding == Binding::Local).then(|| old.source_name.clone()),
        position: 0,
    }
}

fn section_kind(section: &crate::object_model::Section) -> SectionKind {
    if section.is_exec() {
        SectionKind::Text
    } else if section.nobits {
        SectionKind::Bss
    } else if section.is_write() {
        SectionKind::Data
    } else {
        SectionKind::ReadOnlyData
    }
}

fn kind_rank(kind: SectionKind) -> u8 {
    match kind {
        SectionKind::Text => 0,
        SectionKind::ReadOnlyData => 1,
        SectionKind::Data => 2,
        SectionKind::Bss => 3,
    }
}

/// Build the patch named `name`.
pub fn emit(
    old: &ObjectModel,
    new: &ObjectModel,
    changes: &Changes,
    closure: &Closure,
    name: &str,
) -> Result<Patch> {
    let mut meta = Meta::new(name);

    // Sections, in a fixed order.
    let mut order: Vec<usize> = closure.sections.iter().copied().collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (&new.sections[a], &new.sections[b]);
        (kind_rank(section_kind(sa)), &sa.name, a).cmp(&(kind_rank(section_kind(sb)), &sb.name, b))
    });
    let section_index: BTreeMap<usize, usize> =
        order.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let sections: Vec<Section> = order
        .iter()
        .map(|&s| {
            let section = &new.sections[s];
            match section_kind(section) {
                SectionKind::Bss => Section::bss(&section.name, section.align, section.size),
                kind => {
                    Section::with_data(&section.name, kind, section.align, section.data.clone())
                }
            }
        })
        .collect();

    // Symbols defined in carried sections.
    let mut symbols = Vec::new();
    let mut symbol_index = BTreeMap::new();
    for &s in &order {
        let mut defined: Vec<usize> = new
            .symbols_in(s)
            .iter()
            .copied()
            .filter(|&i| {
                matches!(
                    new.symbols[i].st_type,
                    SymbolType::Func | SymbolType::Object | SymbolType::NoType
                )
            })
            .collect();
        defined.sort_by(|&a, &b| {
            let (x, y) = (&new.symbols[a], &new.symbols[b]);
            (x.value, &x.name).cmp(&(y.value, &y.name))
        });
        for i in defined {
            let symbol = &new.symbols[i];
            symbol_index.insert(i, symbols.len());
            symbols.push(PatchSymbol {
                name: symbol.name.clone(),
                kind: if symbol.st_type == SymbolType::Func {
                    SymbolKind::Function
                } else {
                    SymbolKind::Object
                },
                section: section_index[&s],
                offset: symbol.value,
                size: symbol.size,
            });
        }
    }

    // References to the running program, sorted, by the name OLD has (renumbered clones and static
    // locals are correlated under another name).
    let running = |e: usize| {
        closure
            .external_old
            .get(&e)
            .map_or(&new.symbols[e], |&o| &old.symbols[o])
    };
    let references: BTreeSet<TargetSymbol> = closure
        .externals
        .iter()
        .map(|&e| target_symbol(old, running(e)))
        .collect();
    meta.references = references.into_iter().collect();
    let reference_index = |e: usize| {
        let wanted = target_symbol(old, running(e));
        meta.references.iter().position(|r| *r == wanted)
    };

    // Relocations, with their original type and NEW addend, retargeted.
    let mut relocations = Vec::new();
    for &s in &order {
        for (i, reloc) in new.sections[s].relocations.iter().enumerate() {
            let (target, addend) = match closure.decisions.get(&(s, i)) {
                Some(Decision::Carried {
                    symbol: Some(sym),
                    addend,
                    section,
                }) => match symbol_index.get(sym) {
                    Some(&p) => (RelocTarget::Symbol(p), *addend),
                    None => (
                        RelocTarget::Section(section_index[section]),
                        *addend + new.symbols[*sym].value as i64,
                    ),
                },
                Some(Decision::Carried {
                    symbol: None,
                    section,
                    addend,
                }) => (RelocTarget::Section(section_index[section]), *addend),
                Some(Decision::External { symbol, addend }) => match reference_index(*symbol) {
                    Some(r) => (RelocTarget::External(r), *addend),
                    None => bail!(
                        "internal error: no reference for '{}'",
                        new.symbols[*symbol].name
                    ),
                },
                _ => bail!(
                    "relocation at {:#x} in '{}' has no target",
                    reloc.offset,
                    new.sections[s].name
                ),
            };
            relocations.push(Relocation {
                section: section_index[&s],
                offset: reloc.offset,
                r_type: reloc.r_type,
                target,
                addend,
            });
        }
    }

    // Replaced functions.
    for (&n, (o, reason)) in &changes.replaced {
        let original = &old.symbols[*o];
        let bytes = old.symbol_bytes(original);
        let mut masked: Vec<_> = old
            .symbol_relocations(original)
            .iter()
            .filter_map(|r| linker_rewritten_bytes(r.r_type, r.offset))
            .collect();
        masked.sort_by_key(|r| (r.offset, r.len));
        meta.functions.push(ReplacedFunction {
            target: target_symbol(old, original),
            original_size: original.size,
            original_hash: masked_hash(&bytes, &masked),
            masked,
            replacement: new.symbols[n].name.clone(),
            reason: reason.clone(),
        });
    }
    meta.functions.sort_by(|a, b| a.target.cmp(&b.target));

    // New data objects.
    meta.new_data = symbols
        .iter()
        .filter(|s| s.kind == SymbolKind::Object)
        .filter(|s| !is_special_static(&s.name) && !s.name.is_empty())
        .filter(|s| {
            old.symbol_by_name(&s.name).is_none_or(|o| o.undefined)
                || closure.new_data.contains(&s.name)
        })
        .map(|s| s.name.clone())
        .collect();
    meta.new_data.sort();

    Ok(Patch {
        meta,
        sections,
        symbols,
        relocations,
    })
}

/// Names of functions the patch carries that do not exist in OLD.
pub fn new_function_names(old: &ObjectModel, patch: &Patch) -> Vec<String> {
    let mut names: Vec<String> = patch
        .symbols
        .iter()
        .filter(|s| s.kind == SymbolKind::Function)
        .filter(|s| old.symbol_by_name(&s.name).is_none_or(|o| !o.is_function()))
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    names
}

/// The patch of one translation unit, before merging.
#[derive(Debug)]
pub struct UnitPatch {
    /// Base name of the unit's OLD source (what `TargetSymbol::file` holds for its locals).
    pub unit: String,
    pub patch: Patch,
    /// Names of the new functions it carries (see [`new_function_names`]).
    pub new_functions: Vec<String>,
}

/// Merge the patches of several translation units, in the order given, into one patch named `name`.
///
/// Sections are concatenated unit by unit; references to the running program are merged and sorted.
/// Patch symbols must have unique names, so a symbol whose name an earlier unit already uses (two
/// units each with a `static int helper`) is renamed `name@unit` (then `name@unit.2`, …); the
/// replaced function's `target` keeps the original name and its unit's file. With one unit the result
/// is that unit's patch, renamed `name`. Returns the patch and the (renamed) new function names.
pub fn merge(units: Vec<UnitPatch>, name: &str) -> Result<(Patch, Vec<String>)> {
    let mut meta = Meta::new(name);
    let references: BTreeSet<TargetSymbol> = units
        .iter()
        .flat_map(|u| u.patch.meta.references.iter().cloned())
        .collect();
    meta.references = references.into_iter().collect();

    let mut sections = Vec::new();
    let mut symbols: Vec<PatchSymbol> = Vec::new();
    let mut relocations = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut new_functions = Vec::new();
    let mut replaced: BTreeMap<TargetSymbol, String> = BTreeMap::new();
    for unit in units {
        let patch = unit.patch;
        let (section_base, symbol_base) = (sections.len(), symbols.len());
        let external: Vec<usize> = patch
            .meta
            .references
            .iter()
            .map(|r| meta.references.binary_search(r).unwrap_or_default())
            .collect();
        let mut renamed: BTreeMap<String, String> = BTreeMap::new();
        for mut symbol in patch.symbols {
            let mut unique = symbol.name.clone();
            let mut n = 1;
            while taken.contains(&unique) {
                unique = if n == 1 {
                    format!("{}@{}", symbol.name, unit.unit)
                } else {
                    format!("{}@{}.{n}", symbol.name, unit.unit)
                };
                n += 1;
            }
            taken.insert(unique.clone());
            if unique != symbol.name {
                renamed.insert(symbol.name.clone(), unique.clone());
            }
            symbol.name = unique;
            symbol.section += section_base;
            symbols.push(symbol);
        }
        let rename = |n: &String| renamed.get(n).cloned().unwrap_or_else(|| n.clone());
        sections.extend(patch.sections);
        for mut reloc in patch.relocations {
            reloc.section += section_base;
            reloc.target = match reloc.target {
                RelocTarget::Symbol(i) => RelocTarget::Symbol(i + symbol_base),
                RelocTarget::Section(i) => RelocTarget::Section(i + section_base),
                RelocTarget::External(i) => RelocTarget::External(external[i]),
            };
            relocations.push(reloc);
        }
        for mut function in patch.meta.functions {
            function.replacement = rename(&function.replacement);
            if let Some(other) = replaced.insert(function.target.clone(), unit.unit.clone()) {
                bail!(
                    "function '{}' is replaced by two units ({other} and {})",
                    function.target.name,
                    unit.unit
                );
            }
            meta.functions.push(function);
        }
        meta.new_data.extend(patch.meta.new_data.iter().map(rename));
        new_functions.extend(unit.new_functions.iter().map(rename));
    }
    meta.functions.sort_by(|a, b| a.target.cmp(&b.target));
    meta.new_data.sort();
    new_functions.sort();
    Ok((
        Patch {
            meta,
            sections,
            symbols,
            relocations,
        },
        new_functions,
    ))
}

//! Refusal: changes a live patch cannot carry safely. Each check returns one human-readable reason per
//! problem, naming the symbol; the command prints them as `error: cannot live-patch: <reason>` and exits
//! with status 2.

use std::collections::BTreeSet;

use ulp_runtime::meta::Binding;
use ulp_runtime::x86_64::{min_patchable_size, relocation_field_size, relocation_name};

use crate::closure::{Closure, Decision};
use crate::compare::{masked_bytes, relocations_of, Changes, Meaning};
use crate::correlate::Correlation;
use crate::object_model::{is_tls_relocation, ObjectModel, Symbol, SymbolType};

fn describe(symbol: &Symbol) -> &'static str {
    match symbol.binding {
        Some(Binding::Local) => "static",
        _ => "global",
    }
}

/// Existing data whose size, initializer, binding or thread-locality changed.
pub fn data_changes(
    old: &ObjectModel,
    new: &ObjectModel,
    correlation: &Correlation,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for pair in &correlation.data {
        let Some(o) = pair.old else { continue };
        let (o, n) = (&old.symbols[o], &new.symbols[pair.new]);
        let what = describe(o);
        if o.binding != n.binding {
            reasons.push(format!("{what} '{}' made {}", n.name, describe(n)));
        } else if (o.st_type == SymbolType::Tls) != (n.st_type == SymbolType::Tls) {
            reasons.push(format!("thread-locality of {what} '{}' changed", n.name));
        } else if o.size != n.size {
            reasons.push(format!(
                "size of {what} '{}' changed from {} to {} bytes",
                n.name, o.size, n.size
            ));
        } else if masked_bytes(old, o) != masked_bytes(new, n)
            || relocations_of(old, o) != relocations_of(new, n)
        {
            reasons.push(format!("initializer of {what} '{}' changed", n.name));
        } else {
            let writable =
                |m: &ObjectModel, s: &Symbol| s.section.is_some_and(|i| m.sections[i].is_write());
            if writable(old, o) != writable(new, n) {
                reasons.push(format!("constness of {what} '{}' changed", n.name));
            }
        }
    }
    reasons
}

/// Replaced functions that changed binding or are too small for the redirecting jump, and new GCC
/// clones that correlation could not pair with OLD's clones of the same name.
pub fn function_changes(old: &ObjectModel, new: &ObjectModel, changes: &Changes) -> Vec<String> {
    let mut reasons = Vec::new();
    for (&n, (o, _)) in &changes.replaced {
        let (o, n) = (&old.symbols[*o], &new.symbols[n]);
        if o.binding != n.binding {
            reasons.push(format!(
                "{} function '{}' made {}",
                describe(o),
                n.name,
                describe(n)
            ));
        }
        let bytes = old.symbol_bytes(o);
        let needed = min_patchable_size(&bytes);
        if o.size < needed {
            reasons.push(format!(
                "function '{}' is {} bytes, too small for a {}-byte jump",
                o.name, o.size, needed
            ));
        }
    }
    for (&n, olds) in &changes.ambiguous {
        let names: Vec<&str> = olds.iter().map(|&o| old.symbols[o].name.as_str()).collect();
        reasons.push(format!(
            "GCC clone '{}' cannot be paired with OLD's {} (the number of clones changed and their \
             code differs)",
            new.symbols[n].name,
            names
                .iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    reasons
}

/// The entity a carried section holds, for messages.
fn owner(new: &ObjectModel, section: usize) -> String {
    match new.symbols_in(section).first() {
        Some(&s) => {
            let symbol = &new.symbols[s];
            let kind = if symbol.is_function() {
                "function"
            } else {
                "data"
            };
            format!("{kind} '{}'", symbol.name)
        }
        None => format!("section '{}'", new.sections[section].name),
    }
}

/// Carried code or data the patch format or applier cannot handle yet: thread-local storage,
/// unsupported relocation types, relocations without a symbol, common symbols.
pub fn carried_content(new: &ObjectModel, closure: &Closure) -> Vec<String> {
    let mut reasons = Vec::new();
    for &s in &closure.sections {
        let section = &new.sections[s];
        if section.is_tls() {
            for &sym in new.symbols_in(s) {
                reasons.push(format!(
                    "new thread-local variable '{}' (not supported yet)",
                    new.symbols[sym].name
                ));
            }
            continue;
        }
        let mut seen = BTreeSet::new();
        for (i, reloc) in section.relocations.iter().enumerate() {
            let message = if is_tls_relocation(reloc.r_type) {
                format!(
                    "{} uses thread-local storage ({}): not supported yet",
                    owner(new, s),
                    relocation_name(reloc.r_type)
                )
            } else if relocation_field_size(reloc.r_type).is_none() {
                format!(
                    "{} uses relocation {}: not supported yet",
                    owner(new, s),
                    relocation_name(reloc.r_type)
                )
            } else if closure.decisions.get(&(s, i)) == Some(&Decision::Unresolved) {
                format!(
                    "{} has a relocation without a symbol at {:#x}",
                    owner(new, s),
                    reloc.offset
                )
            } else {
                continue;
            };
            if seen.insert(message.clone()) {
                reasons.push(message);
            }
        }
    }
    for &e in &closure.externals {
        let symbol = &new.symbols[e];
        if symbol.common {
            reasons.push(format!(
                "common symbol '{}' (build with -fno-common; not supported yet)",
                symbol.name
            ));
        }
    }
    reasons
}

fn is_constructor_section(name: &str) -> bool {
    [
        ".init_array",
        ".fini_array",
        ".preinit_array",
        ".ctors",
        ".dtors",
    ]
    .iter()
    .any(|p| name == *p || name.starts_with(&format!("{p}.")))
}

/// What the constructor/destructor tables of `object` call, by meaning.
fn constructor_tables(object: &ObjectModel) -> Vec<(String, Vec<Meaning>)> {
    let mut tables: Vec<(String, Vec<Meaning>)> = object
        .sections
        .iter()
        .filter(|s| is_constructor_section(&s.name))
        .map(|s| {
            let meanings = s
                .relocations
                .iter()
                .map(|r| crate::compare::meaning(object, r, 0))
                .collect();
            (s.name.clone(), meanings)
        })
        .collect();
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    tables
}

/// Changed constructor/destructor tables, and replaced functions that are constructors.
pub fn constructor_changes(old: &ObjectModel, new: &ObjectModel, changes: &Changes) -> Vec<String> {
    let mut reasons = Vec::new();
    let (old_tables, new_tables) = (constructor_tables(old), constructor_tables(new));
    if old_tables != new_tables {
        let names: BTreeSet<&str> = old_tables
            .iter()
            .chain(&new_tables)
            .map(|t| t.0.as_str())
            .collect();
        reasons.push(format!(
            "constructors or destructors changed ({})",
            names.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    for (_, meanings) in &new_tables {
        for meaning in meanings {
            if let Meaning::Symbol { name, .. } = meaning {
                if let Some(symbol) = new.symbol_by_name(name) {
                    if changes.replaced.contains_key(&symbol.index) {
                        reasons.push(format!("constructor or destructor '{name}' changed"));
                    }
                }
            }
        }
    }
    reasons
}

//! Refusal: changes a live patch cannot carry safely. Each check returns one [`Refusal`] per problem,
//! naming the symbol; [`locate`] then finds the source file and line of the offending change in the
//! DWARF (NEW's, OLD's for things that were removed), and the command prints them as
//! `error: cannot live-patch: new.c:12: <reason>` and exits with status 2.

use std::collections::BTreeSet;
use std::fmt;

use object::elf;
use serde::Serialize;

use ulp_runtime::meta::Binding;
use ulp_runtime::x86_64::{
    is_supported_tls, min_patchable_size, relocation_field_size, relocation_name,
};

use crate::closure::{Closure, Decision};
use crate::compare::{cold_parent, masked_bytes, relocations_of, Changes, Meaning};
use crate::correlate::Correlation;
use crate::dwarf::{DebugInfo, Location};
use crate::object_model::{is_tls_relocation, ObjectModel, Symbol, SymbolType};

/// Which object a [`Site`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Old,
    New,
}

/// The place a refusal is about: a symbol of OLD or NEW and, for code, the byte (relative to the
/// symbol) where the offending change is; without it, the symbol's declaration is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    pub side: Side,
    pub symbol: usize,
    pub offset: Option<u64>,
}

impl Site {
    fn new(symbol: usize) -> Site {
        Site {
            side: Side::New,
            symbol,
            offset: None,
        }
    }
    fn at(symbol: usize, offset: Option<u64>) -> Site {
        Site {
            side: Side::New,
            symbol,
            offset,
        }
    }
    fn old(symbol: usize) -> Site {
        Site {
            side: Side::Old,
            symbol,
            offset: None,
        }
    }
}

/// One reason a change cannot be live-patched. Displayed as `file:line: reason` when the source line
/// is known, else `reason`; compares equal to a `String` holding its reason (without the location).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The function, variable or section at fault.
    pub symbol: String,
    /// What is wrong, naming the symbol.
    pub reason: String,
    /// Source file of the offending change, from DWARF.
    pub file: Option<String>,
    /// Source line of the offending change, from DWARF.
    pub line: Option<u64>,
    #[serde(skip)]
    pub site: Option<Site>,
}

impl Refusal {
    fn new(symbol: impl Into<String>, reason: String, site: Option<Site>) -> Refusal {
        Refusal {
            symbol: symbol.into(),
            reason,
            file: None,
            line: None,
            site,
        }
    }
    /// Whether the displayed text contains `pattern`.
    pub fn contains(&self, pattern: &str) -> bool {
        self.to_string().contains(pattern)
    }
    /// The source location, if found.
    pub fn location(&self) -> Option<Location> {
        Some(Location {
            file: self.file.clone()?,
            line: self.line?,
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location() {
            Some(location) => write!(f, "{location}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl PartialEq<String> for Refusal {
    fn eq(&self, other: &String) -> bool {
        &self.reason == other
    }
}

impl PartialEq<&str> for Refusal {
    fn eq(&self, other: &&str) -> bool {
        self.reason == *other
    }
}

/// Fill in the source file and line of every refusal from the DWARF of OLD and NEW (read only when
/// some refusal needs it).
pub fn locate(refusals: &mut [Refusal], old: &ObjectModel, new: &ObjectModel) {
    if refusals.iter().all(|r| r.site.is_none()) {
        return;
    }
    let (old_info, new_info) = (DebugInfo::load(old), DebugInfo::load(new));
    for refusal in refusals {
        let Some(site) = refusal.site else { continue };
        let (object, info) = match site.side {
            Side::Old => (old, &old_info),
            Side::New => (new, &new_info),
        };
        let Some(symbol) = object.symbols.get(site.symbol) else {
            continue;
        };
        let location = match site.offset {
            Some(offset) if symbol.is_function() => info.line_in(symbol, offset),
            _ => info.declaration(symbol),
        };
        if let Some(location) = location {
            refusal.file = Some(location.file);
            refusal.line = Some(location.line);
        }
    }
}

/// The first byte where two functions differ (relocation fields masked), or where the shorter ends.
pub fn first_difference(
    old: &ObjectModel,
    old_symbol: &Symbol,
    new: &ObjectModel,
    new_symbol: &Symbol,
) -> Option<u64> {
    let (a, b) = (masked_bytes(old, old_symbol), masked_bytes(new, new_symbol));
    match a.iter().zip(&b).position(|(x, y)| x != y) {
        Some(at) => Some(at as u64),
        None if a.len() != b.len() => Some(a.len().min(b.len()) as u64),
        None => {
            let (ra, rb) = (
                relocations_of(old, old_symbol),
                relocations_of(new, new_symbol),
            );
            rb.iter()
                .zip(&ra)
                .find(|(n, o)| n != o)
                .map(|(n, _)| n.offset)
                .or_else(|| rb.get(ra.len()).map(|n| n.offset))
                .or_else(|| ra.get(rb.len()).map(|o| o.offset))
        }
    }
}

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
) -> Vec<Refusal> {
    let mut reasons = Vec::new();
    for pair in &correlation.data {
        let Some(o) = pair.old else { continue };
        let (o, n) = (&old.symbols[o], &new.symbols[pair.new]);
        let what = describe(o);
        let reason = if o.binding != n.binding {
            format!("{what} '{}' made {}", n.name, describe(n))
        } else if (o.st_type == SymbolType::Tls) != (n.st_type == SymbolType::Tls) {
            format!("thread-locality of {what} '{}' changed", n.name)
        } else if o.size != n.size {
            format!(
                "size of {what} '{}' changed from {} to {} bytes",
                n.name, o.size, n.size
            )
        } else if masked_bytes(old, o) != masked_bytes(new, n)
            || relocations_of(old, o) != relocations_of(new, n)
        {
            format!("initializer of {what} '{}' changed", n.name)
        } else {
            let writable =
                |m: &ObjectModel, s: &Symbol| s.section.is_some_and(|i| m.sections[i].is_write());
            if writable(old, o) == writable(new, n) {
                continue;
            }
            format!("constness of {what} '{}' changed", n.name)
        };
        reasons.push(Refusal::new(&n.name, reason, Some(Site::new(n.index))));
    }
    reasons
}

/// Replaced functions that changed binding or are too small for the redirecting jump, and new GCC
/// clones that correlation could not pair with OLD's clones of the same name.
pub fn function_changes(old: &ObjectModel, new: &ObjectModel, changes: &Changes) -> Vec<Refusal> {
    let mut reasons = Vec::new();
    for (&n, (o, _)) in &changes.replaced {
        let (o, n) = (&old.symbols[*o], &new.symbols[n]);
        if o.binding != n.binding {
            let reason = format!("{} function '{}' made {}", describe(o), n.name, describe(n));
            reasons.push(Refusal::new(&n.name, reason, Some(Site::new(n.index))));
        }
        let bytes = old.symbol_bytes(o);
        let needed = min_patchable_size(&bytes);
        if o.size < needed {
            let reason = format!(
                "function '{}' is {} bytes, too small for a {}-byte jump",
                o.name, o.size, needed
            );
            let site = Site::at(n.index, first_difference(old, o, new, n));
            reasons.push(Refusal::new(&n.name, reason, Some(site)));
        }
    }
    for (&n, olds) in &changes.ambiguous {
        let name = &new.symbols[n].name;
        let names: Vec<String> = olds
            .iter()
            .map(|&o| format!("'{}'", old.symbols[o].name))
            .collect();
        reasons.push(Refusal::new(
            name,
            format!(
                "GCC clone '{name}' cannot be paired with OLD's {} (the number of clones changed \
                 and their code differs)",
                names.join(", ")
            ),
            Some(Site::at(n, Some(0))),
        ));
    }
    reasons
}

/// The entity a carried section holds, for messages: its description, name and symbol (if any).
fn owner(new: &ObjectModel, section: usize) -> (String, String, Option<usize>) {
    match new.symbols_in(section).first() {
        Some(&s) => {
            let symbol = &new.symbols[s];
            let kind = if symbol.is_function() {
                "function"
            } else {
                "data"
            };
            (
                format!("{kind} '{}'", symbol.name),
                symbol.name.clone(),
                Some(s),
            )
        }
        None => {
            let name = &new.sections[section].name;
            (format!("section '{name}'"), name.clone(), None)
        }
    }
}

/// Why a thread-local-storage relocation of carried code cannot be patched, or `None` when it can:
/// local-exec (`R_X86_64_TPOFF32`) and initial-exec (`R_X86_64_GOTTPOFF`) references to an existing
/// thread-local variable of the running program. A new thread-local variable is refused with its
/// section (a patch cannot add to the TLS block of threads that already exist).
fn tls_refusal(new: &ObjectModel, r_type: u32, decision: Option<&Decision>) -> Option<String> {
    let name = relocation_name(r_type);
    if !is_supported_tls(r_type) {
        // One line per model: the types that come together name the same model the same way.
        let (model, types) = match r_type {
            elf::R_X86_64_TLSGD => ("general-dynamic", name),
            elf::R_X86_64_TLSLD | elf::R_X86_64_DTPOFF32 | elf::R_X86_64_DTPOFF64 => (
                "local-dynamic",
                "R_X86_64_TLSLD, R_X86_64_DTPOFF32".to_string(),
            ),
            elf::R_X86_64_GOTPC32_TLSDESC | elf::R_X86_64_TLSDESC_CALL => (
                "TLS-descriptor",
                "R_X86_64_GOTPC32_TLSDESC, R_X86_64_TLSDESC_CALL".to_string(),
            ),
            _ => ("an unsupported", name),
        };
        return Some(format!(
            "uses thread-local storage with the {model} model ({types}): not supported \
             (only local-exec and initial-exec; build with -ftls-model=initial-exec)"
        ));
    }
    match decision {
        Some(Decision::External { symbol, .. })
            if new.symbols[*symbol].st_type == SymbolType::Tls =>
        {
            None
        }
        Some(Decision::External { symbol, .. }) if new.symbols[*symbol].undefined => None,
        Some(Decision::External { symbol, .. }) => Some(format!(
            "uses '{}' as thread-local ({name}) but it is not a thread-local variable",
            new.symbols[*symbol].name
        )),
        // A carried TLS section is refused as a new thread-local variable.
        Some(Decision::Carried { section, .. }) if new.sections[*section].is_tls() => None,
        _ => Some(format!(
            "uses thread-local storage ({name}) of something that is not an existing thread-local \
             variable: not supported"
        )),
    }
}

/// Carried code or data the patch format or applier cannot handle yet: thread-local storage,
/// unsupported relocation types, relocations without a symbol, common symbols.
pub fn carried_content(new: &ObjectModel, closure: &Closure) -> Vec<Refusal> {
    let mut reasons = Vec::new();
    for &s in &closure.sections {
        let section = &new.sections[s];
        if section.is_tls() {
            for &sym in new.symbols_in(s) {
                let name = &new.symbols[sym].name;
                reasons.push(Refusal::new(
                    name,
                    format!("new thread-local variable '{name}' (not supported yet)"),
                    Some(Site::new(sym)),
                ));
            }
            continue;
        }
        let mut seen = BTreeSet::new();
        let (what, name, symbol) = owner(new, s);
        for (i, reloc) in section.relocations.iter().enumerate() {
            let decision = closure.decisions.get(&(s, i));
            let message = if is_tls_relocation(reloc.r_type) {
                match tls_refusal(new, reloc.r_type, decision) {
                    Some(message) => format!("{what} {message}"),
                    None => continue,
                }
            } else if relocation_field_size(reloc.r_type).is_none() {
                format!(
                    "{what} uses relocation {}: not supported yet",
                    relocation_name(reloc.r_type)
                )
            } else if decision == Some(&Decision::Unresolved) {
                format!(
                    "{what} has a relocation without a symbol at {:#x}",
                    reloc.offset
                )
            } else {
                continue;
            };
            if seen.insert(message.clone()) {
                let site = symbol.map(|sym| {
                    Site::at(
                        sym,
                        Some(reloc.offset.saturating_sub(new.symbols[sym].value)),
                    )
                });
                reasons.push(Refusal::new(&name, message, site));
            }
        }
    }
    for &e in &closure.externals {
        let symbol = &new.symbols[e];
        if symbol.common {
            reasons.push(Refusal::new(
                &symbol.name,
                format!(
                    "common symbol '{}' (build with -fno-common; not supported yet)",
                    symbol.name
                ),
                Some(Site::new(e)),
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
pub fn constructor_changes(
    old: &ObjectModel,
    new: &ObjectModel,
    changes: &Changes,
) -> Vec<Refusal> {
    let mut reasons = Vec::new();
    let (old_tables, new_tables) = (constructor_tables(old), constructor_tables(new));
    if old_tables != new_tables {
        let names: BTreeSet<&str> = old_tables
            .iter()
            .chain(&new_tables)
            .map(|t| t.0.as_str())
            .collect();
        let names = names.into_iter().collect::<Vec<_>>().join(", ");
        // The source line: a constructor that was added (NEW), else one that was removed (OLD).
        let listed = |tables: &[(String, Vec<Meaning>)]| -> BTreeSet<String> {
            tables
                .iter()
                .flat_map(|t| &t.1)
                .filter_map(|m| match m {
                    Meaning::Symbol { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect()
        };
        let (in_old, in_new) = (listed(&old_tables), listed(&new_tables));
        let site = in_new
            .difference(&in_old)
            .find_map(|n| new.symbol_by_name(n).map(|s| Site::new(s.index)))
            .or_else(|| {
                in_old
                    .difference(&in_new)
                    .find_map(|n| old.symbol_by_name(n).map(|s| Site::old(s.index)))
            });
        reasons.push(Refusal::new(
            names.clone(),
            format!("constructors or destructors changed ({names})"),
            site,
        ));
    }
    for (_, meanings) in &new_tables {
        for meaning in meanings {
            if let Meaning::Symbol { name, .. } = meaning {
                if let Some(symbol) = new.symbol_by_name(name) {
                    if let Some((o, _)) = changes.replaced.get(&symbol.index) {
                        let offset = first_difference(old, &old.symbols[*o], new, symbol);
                        reasons.push(Refusal::new(
                            name,
                            format!("constructor or destructor '{name}' changed"),
                            Some(Site::at(symbol.index, offset)),
                        ));
                    }
                }
            }
        }
    }
    reasons
}

/// A change that only adds functions: nothing in the running program would call them. `functions`
/// are NEW symbol indices.
pub fn only_additions(new: &ObjectModel, functions: &[usize]) -> Refusal {
    let mut shown: Vec<usize> = functions
        .iter()
        .copied()
        .filter(|&i| cold_parent(&new.symbols[i].name).is_none())
        .collect();
    if shown.is_empty() {
        shown = functions.to_vec();
    }
    shown.sort_by(|&a, &b| new.symbols[a].name.cmp(&new.symbols[b].name));
    let names: Vec<&str> = shown
        .iter()
        .map(|&i| new.symbols[i].name.as_str())
        .collect();
    Refusal::new(
        names.first().copied().unwrap_or_default(),
        format!(
            "the change replaces no function of the running program (it only adds {})",
            names.join(", ")
        ),
        shown.first().map(|&i| Site::at(i, Some(0))),
    )
}

/// A change that only removes functions (OLD symbol names, sorted): a live patch cannot remove code.
pub fn only_removals(old: &ObjectModel, removed: &[String]) -> Refusal {
    Refusal::new(
        removed.first().cloned().unwrap_or_default(),
        format!(
            "the only change removes functions ({}); a live patch cannot remove code",
            removed.join(", ")
        ),
        removed
            .first()
            .and_then(|n| old.symbol_by_name(n))
            .map(|s| Site::old(s.index)),
    )
}

//! Closing over references: starting from every changed or new function, follow relocations through a
//! graph (petgraph) and decide, for each one, whether its target is *carried* in the patch (new
//! functions and data, replaced functions, string literals, jump tables and other anonymous constants,
//! `.cold` parts of carried functions) or is an *external* reference to the running program (anything
//! that exists unchanged in OLD: functions, globals, static locals, libc). An external that correlation
//! paired with an OLD symbol of another name is recorded with it (`external_old`), so the patch refers to
//! the name the running program has.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::graphmap::DiGraphMap;

use crate::compare::{cold_parent, Changes};
use crate::correlate::{is_special_static, Correlation};
use crate::object_model::{ObjectModel, Target};

/// A node of the reference graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// A NEW section carried in the patch.
    Section(usize),
    /// A NEW symbol referred to in the running program.
    External(usize),
}

/// What one relocation of a carried section becomes in the patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Against something carried: `symbol` (addend relative to it) or, when `None`, the start of
    /// `section`.
    Carried {
        section: usize,
        symbol: Option<usize>,
        addend: i64,
    },
    /// Against NEW symbol `symbol` as found in the running program.
    External { symbol: usize, addend: i64 },
    /// A relocation without a symbol; refused.
    Unresolved,
}

/// The result of the closure.
#[derive(Debug, Clone, Default)]
pub struct Closure {
    pub graph: DiGraphMap<Node, ()>,
    /// NEW sections the patch carries.
    pub sections: BTreeSet<usize>,
    /// NEW symbols referred to in the running program.
    pub externals: BTreeSet<usize>,
    /// For externals that OLD defines (possibly under another name: a renumbered clone or static
    /// local), NEW symbol → OLD symbol; the patch names the OLD symbol, as the running program does.
    pub external_old: BTreeMap<usize, usize>,
    /// Names of the carried data objects that OLD does not have (by correlation, so a static local
    /// that took the number an OLD one had is still new).
    pub new_data: BTreeSet<String>,
    /// Per relocation of a carried section: (section, index in its relocations) → decision.
    pub decisions: BTreeMap<(usize, usize), Decision>,
}

/// Whether NEW symbol `index` must be carried rather than referred to in the running program.
fn must_carry(
    old: &ObjectModel,
    new: &ObjectModel,
    correlation: &Correlation,
    changes: &Changes,
    index: usize,
) -> bool {
    let symbol = &new.symbols[index];
    if symbol.undefined {
        return false;
    }
    if changes.carries(index) || is_special_static(&symbol.name) {
        return true;
    }
    if let Some(parent) = cold_parent(&symbol.name) {
        if new
            .symbol_by_name(parent)
            .is_some_and(|p| changes.carries(p.index))
        {
            return true;
        }
    }
    if symbol.is_function() || symbol.is_data() {
        correlation.old_of(index).is_none()
    } else {
        old.symbol_by_name(&symbol.name).is_none()
    }
}

/// Follow references from the changed and new functions of `changes`.
pub fn close(
    old: &ObjectModel,
    new: &ObjectModel,
    correlation: &Correlation,
    changes: &Changes,
) -> Closure {
    let mut closure = Closure::default();
    let mut work: Vec<usize> = changes
        .replaced
        .keys()
        .chain(&changes.new_functions)
        .filter_map(|&s| new.symbols[s].section)
        .collect();
    work.sort_unstable();
    work.dedup();
    for &s in &work {
        closure.sections.insert(s);
        closure.graph.add_node(Node::Section(s));
    }
    while let Some(from) = work.pop() {
        let section = &new.sections[from];
        let biases = new.pc_biases(from);
        for (i, (reloc, bias)) in section.relocations.iter().zip(biases).enumerate() {
            let resolved = new.resolve(reloc, bias);
            let decision = match resolved.target {
                Target::Symbol(s) if must_carry(old, new, correlation, changes, s) => {
                    match new.symbols[s].section {
                        Some(section) => Decision::Carried {
                            section,
                            symbol: Some(s),
                            addend: resolved.addend,
                        },
                        None => Decision::External {
                            symbol: s,
                            addend: resolved.addend,
                        },
                    }
                }
                Target::Symbol(s) => Decision::External {
                    symbol: s,
                    addend: resolved.addend,
                },
                Target::Section(section) => Decision::Carried {
                    section,
                    symbol: None,
                    addend: resolved.addend,
                },
                Target::Absolute => Decision::Unresolved,
            };
            closure.decisions.insert((from, i), decision);
            let to = match decision {
                Decision::Carried { section, .. } => {
                    if closure.sections.insert(section) {
                        work.push(section);
                    }
                    Node::Section(section)
                }
                Decision::External { symbol, .. } => {
                    closure.externals.insert(symbol);
                    if let Some(o) = correlation.old_of(symbol) {
                        closure.external_old.insert(symbol, o);
                    }
                    Node::External(symbol)
                }
                Decision::Unresolved => continue,
            };
            closure.graph.add_edge(Node::Section(from), to, ());
        }
    }
    for &s in &closure.sections {
        for &i in new.symbols_in(s) {
            let symbol = &new.symbols[i];
            if symbol.is_data()
                && !is_special_static(&symbol.name)
                && correlation.old_of(i).is_none()
            {
                closure.new_data.insert(symbol.name.clone());
            }
        }
    }
    closure
}

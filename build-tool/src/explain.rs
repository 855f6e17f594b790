//! `--explain`: why each function is in the patch. For a replaced function: where its bytes differ
//! (with the source line from NEW's line table), which relocations now refer to something else, and
//! which inlined callees changed (from `DW_TAG_inlined_subroutine` in the DWARF: the changed
//! instructions lie in the code a callee was inlined as); for a new function: that it is new. Each
//! comes with a short unified diff (crate `similar`) of the disassembly (iced-x86, GAS syntax), with
//! relocation targets shown by name and branches inside the function as labels, so the diff shows
//! changes of meaning rather than of placement.

use std::collections::{BTreeSet, HashMap};

use iced_x86::{
    Decoder, DecoderOptions, Formatter, GasFormatter, Instruction, OpKind, SymbolResolver,
    SymbolResult,
};
use serde::Serialize;
use similar::{ChangeTag, TextDiff};

use crate::compare::{self, Meaning, MeaningfulReloc};
use crate::correlate;
use crate::dwarf::{DebugInfo, Location};
use crate::object_model::{ObjectModel, Symbol};

/// Lines of diff kept per function (the rest is summarized).
const MAX_DIFF_LINES: usize = 40;
/// Relocation differences listed per function.
const MAX_RELOCATION_REASONS: usize = 4;

/// One reason a function is in the patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The code differs (relocation fields masked) first at `offset`.
    BytesDiffer {
        offset: u64,
        file: Option<String>,
        line: Option<u64>,
    },
    /// Same bytes as far as the shorter goes, different length.
    SizeChanged { old: u64, new: u64 },
    /// The relocation at `offset` refers to something else.
    RelocationChanged {
        offset: u64,
        now: String,
        was: String,
    },
    /// A relocation that OLD does not have at that position.
    RelocationAdded { offset: u64, target: String },
    /// A relocation of OLD that NEW does not have.
    RelocationRemoved { offset: u64, target: String },
    /// The changed instructions include code of `callee`, inlined into this function.
    InlinedCalleeChanged {
        callee: String,
        file: Option<String>,
        line: Option<u64>,
    },
    /// A `.cold` part of the function changed.
    PartChanged { part: String },
    /// The function is new in NEW.
    New,
}

impl Reason {
    /// The reason as a sentence about `function`.
    pub fn text(&self, function: &str) -> String {
        let at = |file: &Option<String>, line: &Option<u64>| match (file, line) {
            (Some(f), Some(l)) => format!(" ({f}:{l})"),
            _ => String::new(),
        };
        match self {
            Reason::BytesDiffer { offset, file, line } => {
                format!("bytes differ at +{offset:#x}{}", at(file, line))
            }
            Reason::SizeChanged { old, new } => {
                format!("size changed from {old} to {new} bytes")
            }
            Reason::RelocationChanged { offset, now, was } => {
                format!("relocation at +{offset:#x} now refers to {now} (was {was})")
            }
            Reason::RelocationAdded { offset, target } => {
                format!("relocation at +{offset:#x} to {target} is new")
            }
            Reason::RelocationRemoved { offset, target } => {
                format!("relocation at +{offset:#x} to {target} was removed")
            }
            Reason::InlinedCalleeChanged { callee, file, line } => format!(
                "inlined callee changed: `{function}` is included because `{callee}` (changed{}) \
                 is inlined into it",
                match (file, line) {
                    (Some(f), Some(l)) => format!(", declared at {f}:{l}"),
                    _ => String::new(),
                }
            ),
            Reason::PartChanged { part } => format!("its part '{part}' changed"),
            Reason::New => "new".to_string(),
        }
    }
}

/// Why one function is in the patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The function's name in NEW.
    pub name: String,
    /// `replaced` or `new`.
    pub status: &'static str,
    /// Where the function is declared (NEW's DWARF).
    pub file: Option<String>,
    pub line: Option<u64>,
    pub reasons: Vec<Reason>,
    /// Callees inlined into the function whose inlined code changed.
    pub inlined_changed_callees: Vec<String>,
    /// Unified diff of the disassembly (OLD → NEW); for a new function, its disassembly.
    pub diff: String,
}

impl Explanation {
    /// The explanation as indented text.
    pub fn text(&self) -> String {
        let place = match (&self.file, self.line) {
            (Some(f), Some(l)) => format!(" ({f}:{l})"),
            (Some(f), None) => format!(" ({f})"),
            _ => String::new(),
        };
        let mut text = format!("{} {}{place}:\n", self.status, self.name);
        for reason in &self.reasons {
            text += &format!("  - {}\n", reason.text(&self.name));
        }
        for line in self.diff.lines() {
            text += &format!("    {line}\n");
        }
        text
    }
}

/// The explanations of a set, as text.
pub fn render_text(explanations: &[Explanation]) -> String {
    let mut text = String::new();
    for explanation in explanations {
        text += "\n";
        text += &explanation.text();
    }
    text
}

/// One decoded instruction: offset in its function, text, and the innermost inlined function its
/// code came from.
#[derive(Debug, Clone)]
struct Line {
    offset: u64,
    /// `.LN` when some branch of the function goes here.
    label: Option<String>,
    text: String,
    /// Source line (line table).
    line: Option<u64>,
    location: Option<Location>,
    inlined: Option<String>,
}

/// What a relocation refers to, briefly, for disassembly (`helper`, `counter+4`, `"text"`).
fn symbolic(meaning: &Meaning) -> String {
    match meaning {
        Meaning::Symbol { name, place: 0 } => name.clone(),
        Meaning::Symbol { name, place } => format!("{name}{place:+}"),
        Meaning::String(bytes) => quoted(bytes),
        Meaning::Constant { bytes, .. } => format!(
            "$const[{}]",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        Meaning::Anonymous { section, bytes } => {
            let text = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
            if !text.is_empty() && text.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                quoted(text)
            } else {
                section.clone()
            }
        }
        Meaning::Absolute(v) => format!("{v:#x}"),
    }
}

fn quoted(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let short: String = text.chars().take(24).collect();
    let ellipsis = if text.chars().count() > 24 { "…" } else { "" };
    format!("{:?}{ellipsis}", short)
}

/// Names operands: relocation targets by what they mean, branch targets inside the function as labels.
struct Names {
    /// Per instruction offset: text for its address-like operand (memory displacement, branch target)
    /// and for its immediate.
    relocated: HashMap<u64, (Option<String>, Option<String>)>,
    labels: HashMap<u64, String>,
}

impl SymbolResolver for Names {
    fn symbol(
        &mut self,
        instruction: &Instruction,
        _operand: u32,
        instruction_operand: Option<u32>,
        address: u64,
        _address_size: u32,
    ) -> Option<SymbolResult<'_>> {
        let (addr, imm) = self
            .relocated
            .get(&instruction.ip())
            .cloned()
            .unwrap_or_default();
        let text = match instruction.op_kind(instruction_operand?) {
            OpKind::Memory => addr,
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                addr.or_else(|| self.labels.get(&address).cloned())
            }
            OpKind::Immediate8
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate32to64
            | OpKind::Immediate64 => imm,
            _ => None,
        }?;
        Some(SymbolResult::with_string(address, text))
    }
}

/// Disassemble function `symbol` of `object`.
fn disassemble(object: &ObjectModel, symbol: &Symbol, info: &DebugInfo) -> Vec<Line> {
    let bytes = object.symbol_bytes(symbol);
    let relocations: Vec<MeaningfulReloc> = compare::relocations_of(object, symbol);
    let mut instructions = Vec::new();
    let mut relocated = HashMap::new();
    let mut targets = BTreeSet::new();
    let mut decoder = Decoder::with_ip(64, &bytes, 0, DecoderOptions::NONE);
    while decoder.can_decode() {
        let instruction = decoder.decode();
        let offsets = decoder.get_constant_offsets(&instruction);
        let (start, end) = (instruction.ip(), instruction.next_ip());
        let mut names: (Option<String>, Option<String>) = (None, None);
        for reloc in relocations
            .iter()
            .filter(|r| r.offset >= start && r.offset < end)
        {
            let text = symbolic(&reloc.meaning);
            let branch = (0..instruction.op_count()).any(|i| {
                matches!(
                    instruction.op_kind(i),
                    OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                )
            });
            if !branch
                && offsets.has_immediate()
                && reloc.offset - start == offsets.immediate_offset() as u64
            {
                names.1 = Some(text);
            } else {
                names.0 = Some(text);
            }
        }
        if names.0.is_none()
            && matches!(
                instruction.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            )
        {
            targets.insert(instruction.near_branch_target());
        }
        if names != (None, None) {
            relocated.insert(start, names);
        }
        instructions.push(instruction);
    }
    let labels: HashMap<u64, String> = targets
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, format!(".L{}", i + 1)))
        .collect();
    let mut formatter = GasFormatter::with_options(
        Some(Box::new(Names {
            relocated,
            labels: labels.clone(),
        })),
        None,
    );
    formatter.options_mut().set_first_operand_char_index(8);
    formatter.options_mut().set_rip_relative_addresses(true);
    let lines = instructions
        .iter()
        .map(|instruction| {
            let mut text = String::new();
            formatter.format(instruction, &mut text);
            let location = info.line_in(symbol, instruction.ip());
            let inlined = info
                .inlined_at(symbol, instruction.ip())
                .last()
                .map(|i| i.callee.clone());
            Line {
                offset: instruction.ip(),
                label: labels.get(&instruction.ip()).cloned(),
                text,
                line: location.as_ref().map(|l| l.line),
                location,
                inlined,
            }
        })
        .collect::<Vec<_>>();
    attribute_scheduled(lines)
}

/// Optimizers move instructions of an inlined callee out of the ranges DWARF gives its inlined copy;
/// the line table still says which source line they came from. An instruction outside every inlined
/// range is attributed to the callee whose inlined code has its source line (and only one such).
fn attribute_scheduled(mut lines: Vec<Line>) -> Vec<Line> {
    let mut owners: HashMap<u64, BTreeSet<String>> = HashMap::new();
    for line in &lines {
        if let (Some(number), Some(callee)) = (line.line, &line.inlined) {
            owners.entry(number).or_default().insert(callee.clone());
        }
    }
    for line in &mut lines {
        if line.inlined.is_some() {
            continue;
        }
        let Some(callees) = line.line.and_then(|n| owners.get(&n)) else {
            continue;
        };
        if callees.len() == 1 {
            line.inlined = callees.iter().next().cloned();
        }
    }
    lines
}

/// The listing of a function: instructions, with labels before branch targets.
fn listing(lines: &[Line]) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines {
        if let Some(label) = &line.label {
            out.push(format!("{label}:"));
        }
        out.push(format!("    {}", line.text));
    }
    out
}

/// Unified diff of two listings, cut to [`MAX_DIFF_LINES`].
fn unified(old: &[String], new: &[String], old_name: &str, new_name: &str) -> String {
    let (old, new) = (old.join("\n") + "\n", new.join("\n") + "\n");
    let diff = TextDiff::from_lines(&old, &new);
    let text = diff
        .unified_diff()
        .context_radius(2)
        .header(old_name, new_name)
        .to_string();
    cut(&text)
}

fn cut(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= MAX_DIFF_LINES {
        return text.to_string();
    }
    format!(
        "{}\n… ({} more lines)\n",
        lines[..MAX_DIFF_LINES].join("\n"),
        lines.len() - MAX_DIFF_LINES
    )
}

/// Explain why every function of the patch built from `old` and `new` is in it, in name order.
pub fn explain(old: &ObjectModel, new: &ObjectModel) -> Vec<Explanation> {
    let correlation = correlate::correlate(old, new);
    let changes = compare::find_changes(old, new, &correlation);
    if changes.is_empty() {
        return Vec::new();
    }
    let (old_info, new_info) = (DebugInfo::load(old), DebugInfo::load(new));
    let mut explanations = Vec::new();
    for (&n, (o, summary)) in &changes.replaced {
        let (o, n) = (&old.symbols[*o], &new.symbols[n]);
        explanations.push(replaced(old, o, &old_info, new, n, &new_info, summary));
    }
    for &n in &changes.new_functions {
        let symbol = &new.symbols[n];
        let lines = disassemble(new, symbol, &new_info);
        let listing = listing(&lines);
        let decl = new_info.declaration(symbol);
        explanations.push(Explanation {
            name: symbol.name.clone(),
            status: "new",
            file: decl.as_ref().map(|d| d.file.clone()),
            line: decl.map(|d| d.line),
            reasons: vec![Reason::New],
            inlined_changed_callees: Vec::new(),
            diff: unified(&[], &listing, "/dev/null", &format!("new {}", symbol.name)),
        });
    }
    explanations.sort_by(|a, b| a.name.cmp(&b.name));
    explanations
}

/// The text of the source lines of a function's own code (not inlined callees), whitespace-trimmed;
/// `None` when some line cannot be read.
fn own_source(lines: &[Line], info: &DebugInfo, owner: Option<&str>) -> Option<BTreeSet<String>> {
    let locations: BTreeSet<&Location> = lines
        .iter()
        .filter(|l| l.inlined.as_deref() == owner)
        .filter_map(|l| l.location.as_ref())
        .collect();
    locations
        .into_iter()
        .map(|l| info.source_line(l).map(|t| t.trim().to_string()))
        .collect()
}

fn located(location: Option<Location>) -> (Option<String>, Option<u64>) {
    match location {
        Some(l) => (Some(l.file), Some(l.line)),
        None => (None, None),
    }
}

fn replaced(
    old: &ObjectModel,
    o: &Symbol,
    old_info: &DebugInfo,
    new: &ObjectModel,
    n: &Symbol,
    new_info: &DebugInfo,
    summary: &str,
) -> Explanation {
    // The disassembly diff, and which inlined callees the changed instructions belong to.
    let old_lines = disassemble(old, o, old_info);
    let new_lines = disassemble(new, n, new_info);
    let old_texts: Vec<&str> = old_lines.iter().map(|l| l.text.as_str()).collect();
    let new_texts: Vec<&str> = new_lines.iter().map(|l| l.text.as_str()).collect();
    let diff = similar::capture_diff_slices(similar::Algorithm::Myers, &old_texts, &new_texts);
    // Where the code changes: the first changed instruction (in the diff) that comes from a source
    // line OLD's code does not have; else the first instruction the diff shows changed (a branch
    // displacement that differs only because code moved is no change; at -O2 this may be a register
    // choice in the prologue); else the first differing byte.
    let old_source: BTreeSet<String> = old_lines
        .iter()
        .filter_map(|l| l.location.as_ref())
        .filter_map(|l| old_info.source_line(l))
        .map(|t| t.trim().to_string())
        .collect();
    let inserted: Vec<&Line> = diff
        .iter()
        .filter(|op| op.tag() != similar::DiffTag::Equal)
        .flat_map(|op| op.new_range().filter_map(|i| new_lines.get(i)))
        .collect();
    let first_changed = inserted
        .iter()
        .find(|l| {
            l.location
                .as_ref()
                .and_then(|loc| new_info.source_line(loc))
                .is_some_and(|t| !old_source.contains(t.trim()))
        })
        .or_else(|| inserted.first())
        .map(|l| l.offset);
    let mut reasons = Vec::new();
    let (old_bytes, new_bytes) = (compare::masked_bytes(old, o), compare::masked_bytes(new, n));
    let first_byte = old_bytes.iter().zip(&new_bytes).position(|(a, b)| a != b);
    if let Some(offset) = first_byte.map(|b| first_changed.unwrap_or(b as u64)) {
        let (file, line) = located(new_info.line_in(n, offset));
        reasons.push(Reason::BytesDiffer { offset, file, line });
    } else if old_bytes.len() != new_bytes.len() {
        reasons.push(Reason::SizeChanged {
            old: old_bytes.len() as u64,
            new: new_bytes.len() as u64,
        });
    }
    let (old_relocs, new_relocs) = (
        compare::relocations_of(old, o),
        compare::relocations_of(new, n),
    );
    let mut listed = 0;
    for (i, nr) in new_relocs.iter().enumerate() {
        if listed == MAX_RELOCATION_REASONS {
            break;
        }
        let reason = match old_relocs.get(i) {
            Some(or) if or == nr => continue,
            Some(or) if or.offset == nr.offset && or.r_type == nr.r_type => {
                Reason::RelocationChanged {
                    offset: nr.offset,
                    now: nr.meaning.to_string(),
                    was: or.meaning.to_string(),
                }
            }
            _ => Reason::RelocationAdded {
                offset: nr.offset,
                target: nr.meaning.to_string(),
            },
        };
        // With different code, relocations at shifted offsets say nothing new.
        if reasons.is_empty() || matches!(reason, Reason::RelocationChanged { .. }) {
            reasons.push(reason);
            listed += 1;
        }
    }
    if reasons.is_empty() {
        if let Some(or) = old_relocs.get(new_relocs.len()) {
            reasons.push(Reason::RelocationRemoved {
                offset: or.offset,
                target: or.meaning.to_string(),
            });
        }
    }
    if let Some(part) = summary
        .strip_prefix("its part '")
        .and_then(|s| s.strip_suffix("' changed"))
    {
        reasons.push(Reason::PartChanged {
            part: part.to_string(),
        });
    }

    let mut own_changed = false;
    let mut callees: BTreeSet<String> = BTreeSet::new();
    for op in &diff {
        for change in op.iter_changes(&old_texts, &new_texts) {
            let line = match change.tag() {
                ChangeTag::Equal => continue,
                ChangeTag::Delete => change.old_index().map(|i| &old_lines[i]),
                ChangeTag::Insert => change.new_index().map(|i| &new_lines[i]),
            };
            match line.and_then(|l| l.inlined.clone()) {
                Some(callee) => {
                    callees.insert(callee);
                }
                None => own_changed = true,
            }
        }
    }
    // A callee whose inlined code changed only because of a callee inlined into *it* did not change
    // itself: keep the callees whose own source lines changed (all of them if that cannot be told).
    if callees.len() > 1 {
        let changed: BTreeSet<String> = callees
            .iter()
            .filter(|c| {
                let (a, b) = (
                    own_source(&old_lines, old_info, Some(c)),
                    own_source(&new_lines, new_info, Some(c)),
                );
                a.is_none() || a != b
            })
            .cloned()
            .collect();
        if !changed.is_empty() {
            callees = changed;
        }
    }
    let inlined: Vec<Reason> = callees
        .iter()
        .map(|callee| {
            let decl = new_info
                .function(n)
                .and_then(|f| f.inlined.iter().find(|i| &i.callee == callee))
                .and_then(|i| i.decl.clone());
            let (file, line) = located(decl);
            Reason::InlinedCalleeChanged {
                callee: callee.clone(),
                file,
                line,
            }
        })
        .collect();
    // The function's own code may change with a callee inlined into it (a comparison of the callee's
    // result, registers); what matters is whether its own source lines changed.
    if own_changed && !callees.is_empty() {
        let (a, b) = (
            own_source(&old_lines, old_info, None),
            own_source(&new_lines, new_info, None),
        );
        if a.is_some() && a == b {
            own_changed = false;
        }
    }
    if own_changed {
        reasons.extend(inlined);
    } else {
        reasons.splice(0..0, inlined);
    }
    let old_listing = listing(&old_lines);
    let new_listing = listing(&new_lines);
    let decl = new_info.declaration(n);
    Explanation {
        name: n.name.clone(),
        status: "replaced",
        file: decl.as_ref().map(|d| d.file.clone()),
        line: decl.map(|d| d.line),
        reasons,
        inlined_changed_callees: callees.into_iter().collect(),
        diff: unified(
            &old_listing,
            &new_listing,
            &format!("old {}", o.name),
            &format!("new {}", n.name),
        ),
    }
}

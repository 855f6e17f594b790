//! What the tools print: one human form and one `--json` form for each result.

use serde_json::json;

use ulp_runtime::meta::Binding;
use ulp_runtime::patch::{RelocTarget, SectionKind};
use ulp_runtime::state::AppliedPatch;
use ulp_runtime::x86_64::relocation_name;
use ulp_runtime::Patch;

use crate::apply::{symbol_label, ApplyReport};
use crate::revert::RevertReport;

pub fn apply_text(r: &ApplyReport) -> String {
    let mut out = if r.dry_run {
        format!(
            "dry run: patch {} ({}) would be applied to process {} at {:#x} ({} bytes)\n",
            r.id, r.name, r.pid, r.region_start, r.region_size
        )
    } else {
        format!(
            "applied patch {} ({}) to process {} as #{}; threads stopped for {} µs\n",
            r.id,
            r.name,
            r.pid,
            r.sequence,
            r.stop_us.unwrap_or(0)
        )
    };
    if !r.replaced.is_empty() {
        out += &format!("  replaced patches {}\n", r.replaced.join(", "));
    }
    for f in &r.functions {
        out += &format!("  {} at {:#x} -> {:#x}\n", f.name, f.address, f.new_address);
    }
    out
}

pub fn apply_json(r: &ApplyReport) -> serde_json::Value {
    serde_json::to_value(r).expect("report serializes")
}

pub fn revert_text(r: &RevertReport) -> String {
    format!(
        "reverted patch {} ({}) in process {}: {}; threads stopped for {} µs\n",
        r.id,
        r.name,
        r.pid,
        r.functions.join(", "),
        r.stop_us
    )
}

pub fn revert_json(r: &RevertReport) -> serde_json::Value {
    serde_json::to_value(r).expect("report serializes")
}

pub fn applied_text(pid: i32, patches: &[AppliedPatch]) -> String {
    if patches.is_empty() {
        return format!("no patches applied to process {pid}\n");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let active = crate::stack::active(patches);
    let mut out = String::new();
    for p in patches {
        out += &format!(
            "#{} {} ({}) applied {} s ago (unix time {}) to {}, region {:#x}+{:#x}\n",
            p.sequence,
            p.id,
            p.name,
            now.saturating_sub(p.applied_at),
            p.applied_at,
            p.target_object,
            p.region_start,
            p.region_size
        );
        for f in &p.functions {
            // Stacking: a later patch of the same function is the one that runs.
            let now = match active.iter().find(|a| a.1 == f.address) {
                Some(a) if a.2 != p.sequence => format!(" (runs #{} {})", a.2, a.3),
                _ => " (active)".to_string(),
            };
            out += &format!(
                "  {} at {:#x} -> {:#x}{now}\n",
                f.name, f.address, f.new_address
            );
        }
    }
    out
}

pub fn applied_json(pid: i32, patches: &[AppliedPatch]) -> serde_json::Value {
    let active: Vec<_> = crate::stack::active(patches)
        .into_iter()
        .map(|(name, address, sequence, id)| {
            json!({ "function": name, "address": address, "sequence": sequence, "id": id })
        })
        .collect();
    json!({ "pid": pid, "patches": patches, "active": active })
}

fn kind_name(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Text => "text",
        SectionKind::ReadOnlyData => "rodata",
        SectionKind::Data => "data",
        SectionKind::Bss => "bss",
    }
}

pub fn patch_text(patch: &Patch) -> String {
    let m = &patch.meta;
    let mut out = format!("patch {} ({})\n", m.id, m.name);
    if !m.description.is_empty() {
        out += &format!("  description: {}\n", m.description);
    }
    if !m.cves.is_empty() {
        out += &format!("  CVEs: {}\n", m.cves.join(", "));
    }
    out += &format!(
        "  format {}.{}, written by {}, arch {:?}\n",
        m.format.major, m.format.minor, m.tool, m.arch
    );
    out += &format!(
        "  target: {}{}\n",
        m.target.object.as_deref().unwrap_or("main executable"),
        m.target
            .build_id
            .as_deref()
            .map(|b| format!(" (build-id {b})"))
            .unwrap_or_default()
    );
    out += &format!("  replaces {} function(s):\n", m.functions.len());
    for f in &m.functions {
        out += &format!(
            "    {} ({} bytes) -> {}: {}\n",
            symbol_label(&f.target),
            f.original_size,
            f.replacement,
            f.reason
        );
    }
    if !m.new_data.is_empty() {
        out += &format!("  new data: {}\n", m.new_data.join(", "));
    }
    if !m.references.is_empty() {
        let refs: Vec<String> = m
            .references
            .iter()
            .map(|r| {
                let binding = match r.binding {
                    Binding::Local => "local",
                    Binding::Global => "global",
                    Binding::Weak => "weak",
                };
                format!("{} ({binding})", symbol_label(r))
            })
            .collect();
        out += &format!("  references: {}\n", refs.join(", "));
    }
    if !m.depends.is_empty() {
        out += &format!("  depends on: {}\n", m.depends.join(", "));
    }
    out += &format!("  sections ({}):\n", patch.sections.len());
    for (i, s) in patch.sections.iter().enumerate() {
        let relocs = patch.relocations.iter().filter(|r| r.section == i).count();
        out += &format!(
            "    {} {} {} bytes, align {}, {} relocation(s)\n",
            s.name,
            kind_name(s.kind),
            s.size,
            s.align,
            relocs
        );
    }
    out
}

pub fn patch_json(patch: &Patch) -> serde_json::Value {
    let sections: Vec<_> = patch
        .sections
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "name": s.name,
                "kind": kind_name(s.kind),
                "size": s.size,
                "align": s.align,
                "relocations": patch.relocations.iter().filter(|r| r.section == i).map(|r| json!({
                    "offset": r.offset,
                    "type": relocation_name(r.r_type),
                    "target": match r.target {
                        RelocTarget::Symbol(t) => patch.symbols[t].name.clone(),
                        RelocTarget::Section(t) => patch.sections[t].name.clone(),
                        RelocTarget::External(t) => symbol_label(&patch.meta.references[t]),
                    },
                    "addend": r.addend,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "meta": patch.meta, "sections": sections })
}

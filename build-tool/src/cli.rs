//! The `ulp-build` command line: flags (defined once, with clap), the pipeline run end to end, exit
//! codes (0 written · 1 error · 2 cannot be live-patched · 3 no change) and the human or `--json`
//! summary.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use ulp_runtime::meta::Binding;
use ulp_runtime::Patch;

use crate::compile::{find_compiler, split_flags, CompileError};
use crate::inputs::Unit;
use crate::object_model::ObjectModel;
use crate::{closure, compare, correlate, distro, emit, explain, inputs, refuse, target};

/// Print to stdout, ignoring write errors: a closed pipe (`| head -c 1`) or a full device
/// (`> /dev/full`) must not panic, and the exit status already tells the outcome (the `.ulp` file is
/// written before the summary).
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Print one line to stderr, ignoring write errors (see [`out`]).
fn err_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Turn a change to C sources into a live patch (.ulp).
#[derive(Debug, Parser)]
#[command(name = "ulp-build", version)]
pub struct Args {
    /// The source the running program was built from.
    #[arg(requires = "new")]
    pub old: Option<PathBuf>,
    /// The fixed source.
    pub new: Option<PathBuf>,
    /// Another translation unit, OLD:NEW (repeatable); all units make one patch.
    #[arg(long = "pair", value_name = "OLD:NEW")]
    pub pairs: Vec<String>,
    /// Distro mode: the source tree the running program was built from.
    #[arg(long, value_name = "DIR", requires_all = ["diff", "compile_commands"],
          conflicts_with_all = ["old", "pairs", "cc", "cflags"])]
    pub source: Option<PathBuf>,
    /// Distro mode: the fix, a unified diff applied to a copy of DIR with `patch`.
    #[arg(long, value_name = "FIX.patch", requires = "source")]
    pub diff: Option<PathBuf>,
    /// Distro mode: the compilation database the tree was built with.
    #[arg(long, value_name = "compile_commands.json", requires = "source")]
    pub compile_commands: Option<PathBuf>,
    /// Distro mode: leading path components to strip from the diff's file names (default: detected).
    #[arg(long, value_name = "N", requires = "diff")]
    pub strip: Option<usize>,
    /// Bind the patch to this binary (build-id) and check it has every function and symbol needed.
    #[arg(long, value_name = "BIN")]
    pub target: Option<PathBuf>,
    /// Where to write the patch.
    #[arg(short = 'o', long = "output", value_name = "OUT.ulp")]
    pub output: PathBuf,
    /// C compiler (a name looked up on PATH, or a path); default gcc, else cc.
    #[arg(long, value_name = "CC")]
    pub cc: Option<String>,
    /// Extra compiler flags (split on whitespace; repeatable); use the running program's flags.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub cflags: Vec<String>,
    /// Patch name (default: the output file's stem).
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Explain why each function is in the patch (with a diff of its disassembly).
    #[arg(long)]
    pub explain: bool,
}

/// What the pipeline decided for a pair of objects.
#[derive(Debug)]
pub enum Analysis {
    /// A patch to write, and the names of the new functions it carries.
    Patch {
        patch: Box<Patch>,
        new_functions: Vec<String>,
    },
    /// Nothing to patch.
    NoChange,
    /// The change cannot be live-patched; one reason per problem, with its source line.
    Refused(Vec<refuse::Refusal>),
}

/// Run correlate → compare → closure → refuse → emit on two parsed objects.
pub fn analyze(old: &ObjectModel, new: &ObjectModel, name: &str) -> Result<Analysis> {
    let correlation = correlate::correlate(old, new);
    let changes = compare::find_changes(old, new, &correlation);
    let closure = closure::close(old, new, &correlation, &changes);
    let mut reasons = refuse::data_changes(old, new, &correlation);
    reasons.extend(refuse::function_changes(old, new, &changes));
    reasons.extend(refuse::constructor_changes(old, new, &changes));
    reasons.extend(refuse::carried_content(new, &closure));
    if changes.replaced.is_empty() && !changes.new_functions.is_empty() {
        // Nothing in the running program would ever call the new code.
        let added: Vec<usize> = changes.new_functions.iter().copied().collect();
        reasons.push(refuse::only_additions(new, &added));
    }
    if reasons.is_empty() && changes.is_empty() {
        let removed = correlate::removed_functions(old, new);
        if !removed.is_empty() {
            reasons.push(refuse::only_removals(old, &removed));
        }
    }
    if !reasons.is_empty() {
        refuse::locate(&mut reasons, old, new);
        return Ok(Analysis::Refused(reasons));
    }
    if changes.is_empty() {
        return Ok(Analysis::NoChange);
    }
    let patch = emit::emit(old, new, &changes, &closure, name)?;
    let mut new_functions = emit::new_function_names(old, &patch);
    // Renumbered clones exist in OLD under another name.
    new_functions.retain(|n| {
        new.symbol_by_name(n)
            .is_none_or(|s| correlation.old_of(s.index).is_none())
    });
    Ok(Analysis::Patch {
        patch: Box::new(patch),
        new_functions,
    })
}

/// Run the command; returns the process exit status.
pub fn main() -> i32 {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                out(&e.to_string());
                return 0;
            }
            // clap explains over several lines; the contract is one line.
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let line = line.join(" ");
            err_line(&format!(
                "error: {}",
                line.strip_prefix("error: ").unwrap_or(&line)
            ));
            return 1;
        }
    };
    if let Err(e) = crate::interrupt::install() {
        err_line(&format!("error: cannot install signal handlers: {e}"));
        return 1;
    }
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            err_line(&format!("error: {e:#}"));
            if let Some(CompileError::Failed { stderr, .. }) = e.downcast_ref::<CompileError>() {
                let _ = std::io::stderr().lock().write_all(stderr.as_bytes());
            }
            1
        }
    }
}

/// Whether `text` has no control characters (C0, DEL, C1): it ends up in messages and listings.
fn is_printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// The translation units to build, and what must live as long as they do.
struct Inputs {
    units: Vec<Unit>,
    /// Holds the objects (and in distro mode the tree copies) until the end of the run.
    _temp: tempfile::TempDir,
    /// What to say when no unit changed.
    no_change: String,
}

/// The units named on the command line: positional `OLD NEW`, `--pair`s, or distro mode.
fn inputs(args: &Args) -> Result<Inputs> {
    if let Some(source) = &args.source {
        let (Some(diff), Some(commands)) = (&args.diff, &args.compile_commands) else {
            anyhow::bail!("--source needs --diff and --compile-commands");
        };
        let prepared = distro::prepare(source, diff, commands, args.strip)?;
        for file in &prepared.unused {
            err_line(&format!(
                "warning: {} is changed by {} but no unit of {} uses it; ignored",
                file.display(),
                diff.display(),
                commands.display()
            ));
        }
        let no_change = if prepared.units.is_empty() {
            format!(
                "ulp-build: {} changes no translation unit of {}",
                diff.display(),
                commands.display()
            )
        } else {
            format!(
                "ulp-build: no change in the units {} touches",
                diff.display()
            )
        };
        return Ok(Inputs {
            units: prepared.units,
            _temp: prepared.temp,
            no_change,
        });
    }
    let mut pairs = Vec::new();
    if let (Some(old), Some(new)) = (&args.old, &args.new) {
        pairs.push((old.clone(), new.clone()));
    }
    for pair in &args.pairs {
        pairs.push(inputs::parse_pair(pair)?);
    }
    if pairs.is_empty() {
        anyhow::bail!("nothing to build: give OLD NEW, --pair OLD:NEW or --source DIR");
    }
    for (old, new) in &pairs {
        inputs::check_source(old)?;
        inputs::check_source(new)?;
    }
    if let Ok(output) = args.output.canonicalize() {
        for source in pairs.iter().flat_map(|(o, n)| [o, n]) {
            if source.canonicalize().is_ok_and(|s| s == output) {
                anyhow::bail!(
                    "output {} is the input file {}",
                    args.output.display(),
                    source.display()
                );
            }
        }
    }
    let compiler = find_compiler(args.cc.as_deref())?;
    let flags = split_flags(&args.cflags);
    let temp = crate::interrupt::temp_dir().context("creating a temporary directory")?;
    let units: Vec<Unit> = pairs
        .iter()
        .enumerate()
        .map(|(i, (old, new))| inputs::simple_unit(&compiler, &flags, old, new, i, temp.path()))
        .collect();
    let no_change = match &pairs[..] {
        [(old, new)] => format!(
            "ulp-build: no change between {} and {}",
            old.display(),
            new.display()
        ),
        _ => format!("ulp-build: no change in any of the {} units", pairs.len()),
    };
    Ok(Inputs {
        units,
        _temp: temp,
        no_change,
    })
}

fn run(args: &Args) -> Result<i32> {
    let name = match &args.name {
        Some(name) if !is_printable(name) => anyhow::bail!("--name must be printable text"),
        Some(name) => name.clone(),
        None => {
            let stem = args
                .output
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "patch".to_string());
            if !is_printable(&stem) {
                anyhow::bail!(
                    "the output file name must be printable text to name the patch; use --name"
                );
            }
            stem
        }
    };
    let binary = match &args.target {
        Some(bin) => Some(target::Binary::read(bin)?),
        None => None,
    };
    let with_source = |model: ObjectModel, source: &Path| match std::fs::read_to_string(source) {
        Ok(text) => model.with_source(text),
        Err(_) => model,
    };
    let inputs = inputs(args)?;
    inputs::compile_units(&inputs.units)?;

    // Each translation unit on its own: OLD and NEW objects through the pipeline.
    let mut refusals = Vec::new();
    let mut unit_patches = Vec::new();
    let mut removed = Vec::new();
    let mut explanations = Vec::new();
    for unit in &inputs.units {
        // With the source texts, comparison recognises `__LINE__`-only shifts.
        let old = with_source(
            inputs::parse_object(&unit.old_job.output, &unit.old, &unit.file)?,
            &unit.old_text,
        );
        let new = with_source(
            inputs::parse_object(&unit.new_job.output, &unit.new, &unit.file)?,
            &unit.new_text,
        );
        let unit_removed = correlate::removed_functions(&old, &new);
        for f in &unit_removed {
            err_line(&format!("warning: {}", removed_warning(f)));
        }
        removed.extend(unit_removed);
        match analyze(&old, &new, &name)? {
            Analysis::Refused(reasons) => refusals.extend(reasons),
            Analysis::NoChange => {}
            Analysis::Patch {
                patch,
                new_functions,
            } => {
                if args.explain || args.json {
                    explanations.extend(explain::explain(&old, &new));
                }
                unit_patches.push(emit::UnitPatch {
                    unit: unit.file.clone(),
                    patch: *patch,
                    new_functions,
                })
            }
        }
    }
    if !refusals.is_empty() {
        for reason in &refusals {
            err_line(&format!("error: cannot live-patch: {reason}"));
        }
        if args.json {
            out(&format!("{}\n", json!({ "refused": refusals })));
        }
        return Ok(2);
    }
    if unit_patches.is_empty() {
        err_line(&inputs.no_change);
        if args.json {
            out(&format!(
                "{}\n",
                json!({ "changed": false, "output": null })
            ));
        }
        return Ok(3);
    }
    let (mut patch, new_functions) = emit::merge(unit_patches, &name)?;
    if let (Some(binary), Some(bin)) = (&binary, &args.target) {
        let reasons = binary.check(&patch, bin);
        if !reasons.is_empty() {
            for reason in &reasons {
                err_line(&format!("error: cannot live-patch: {reason}"));
            }
            if args.json {
                out(&format!("{}\n", json!({ "refused": reasons })));
            }
            return Ok(2);
        }
        patch.meta.target = binary.target_object();
    }

    let bytes = ulp_runtime::write_patch(&mut patch)
        .with_context(|| format!("writing {}", args.output.display()))?;
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    if args.json {
        let mut summary = summary_json(&patch, &new_functions, &args.output);
        summary["explanations"] = json!(explanations);
        summary["removed_functions"] = json!(removed);
        if let Some(list) = summary["warnings"].as_array_mut() {
            list.extend(removed.iter().map(|f| json!(removed_warning(f))));
        }
        out(&format!("{summary}\n"));
    } else {
        out(&summary_text(&patch, &new_functions, &args.output));
        if args.explain {
            out(&explain::render_text(&explanations));
        }
    }
    for warning in warnings(&patch) {
        err_line(&format!("warning: {warning}"));
    }
    Ok(0)
}

/// The warning for a function of OLD that NEW no longer has.
pub fn removed_warning(function: &str) -> String {
    format!(
        "function '{function}' was removed in NEW; the running program keeps it (callers that \
         changed no longer call it)"
    )
}

/// Things a person should know before applying the patch, one line each.
pub fn warnings(patch: &Patch) -> Vec<String> {
    patch
        .meta
        .functions
        .iter()
        .filter(|f| f.target.name == "main")
        .map(|f| {
            format!(
                "the patch replaces 'main' ({}); a running main never returns, so ulp-apply will \
                 refuse it as busy. Usually a changed callee was inlined into main, or -fipa-ra \
                 (on at -O2) let main depend on a callee's registers: build the program with \
                 -fno-ipa-ra and keep patched callees noinline (see docs/BUILD.md)",
                f.reason
            )
        })
        .collect()
}

/// The `--json` summary.
pub fn summary_json(patch: &Patch, new_functions: &[String], output: &Path) -> serde_json::Value {
    json!({
        "changed": true,
        "id": patch.meta.id,
        "name": patch.meta.name,
        "output": output.display().to_string(),
        "functions": patch.meta.functions.iter().map(|f| json!({
            "name": f.target.name,
            "binding": f.target.binding,
            "file": f.target.file,
            "original_size": f.original_size,
            "replacement": f.replacement,
            "reason": f.reason,
        })).collect::<Vec<_>>(),
        "new_functions": new_functions,
        "new_data": patch.meta.new_data,
        "target": patch.meta.target,
        "references": patch.meta.references,
        "warnings": warnings(patch),
    })
}

/// The human summary.
pub fn summary_text(patch: &Patch, new_functions: &[String], output: &Path) -> String {
    let mut text = format!(
        "ulp-build: wrote {} (patch {}, {})\n",
        output.display(),
        patch.meta.id,
        patch.meta.name
    );
    if let Some(id) = &patch.meta.target.build_id {
        let object = patch
            .meta
            .target
            .object
            .as_deref()
            .unwrap_or("the main executable");
        text += &format!("  bound to {object} (build-id {id})\n");
    }
    for f in &patch.meta.functions {
        match (&f.target.file, f.target.binding) {
            (Some(file), Binding::Local) => {
                text += &format!("  replace {} ({file}): {}\n", f.target.name, f.reason)
            }
            _ => text += &format!("  replace {}: {}\n", f.target.name, f.reason),
        }
    }
    for f in new_functions {
        text += &format!("  new function {f}\n");
    }
    for d in &patch.meta.new_data {
        text += &format!("  new data {d}\n");
    }
    let references: Vec<String> = patch
        .meta
        .references
        .iter()
        .map(|r| match (&r.file, r.binding) {
            (Some(file), Binding::Local) => format!("{} ({file})", r.name),
            _ => r.name.clone(),
        })
        .collect();
    if !references.is_empty() {
        text += &format!(
            "  uses from the running program: {}\n",
            references.join(", ")
        );
    }
    text
}

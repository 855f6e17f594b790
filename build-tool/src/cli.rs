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

use crate::compile::{compile_pair, find_compiler, split_flags, CompileError};
use crate::object_model::{self, ObjectModel};
use crate::{closure, compare, correlate, emit, explain, refuse};

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

/// Turn a change to a C source file into a live patch (.ulp).
#[derive(Debug, Parser)]
#[command(name = "ulp-build", version)]
pub struct Args {
    /// The source the running program was built from.
    pub old: PathBuf,
    /// The fixed source.
    pub new: PathBuf,
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
    let new_functions = emit::new_function_names(old, &patch);
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

fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Whether `text` has no control characters (C0, DEL, C1): it ends up in messages and listings.
fn is_printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
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
    for source in [&args.old, &args.new] {
        match std::fs::metadata(source) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => anyhow::bail!("{} is not a regular file", source.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!("{}: no such file", source.display())
            }
            Err(e) => anyhow::bail!("{}: {e}", source.display()),
        }
    }
    if let Ok(output) = args.output.canonicalize() {
        for source in [&args.old, &args.new] {
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
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let (old_object, new_object) =
        compile_pair(&compiler, &flags, &args.old, &args.new, dir.path())?;
    let parse = |path: &Path, source: &Path| -> Result<ObjectModel> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if object_model::is_lto(&bytes) {
            anyhow::bail!(
                "{} was compiled to LTO bytecode (-flto), which has no machine code to compare; \
                 build the patch without -flto",
                source.display()
            );
        }
        ObjectModel::parse(&bytes, &base_name(source))
            .with_context(|| format!("object of {}", source.display()))
    };
    let old = parse(&old_object, &args.old)?;
    let new = parse(&new_object, &args.new)?;
    let removed = correlate::removed_functions(&old, &new);
    for f in &removed {
        err_line(&format!("warning: {}", removed_warning(f)));
    }
    let (mut patch, new_functions) = match analyze(&old, &new, &name)? {
        Analysis::Refused(reasons) => {
            for reason in &reasons {
                err_line(&format!("error: cannot live-patch: {reason}"));
            }
            if args.json {
                out(&format!("{}\n", json!({ "refused": reasons })));
            }
            return Ok(2);
        }
        Analysis::NoChange => {
            err_line(&format!(
                "ulp-build: no change between {} and {}",
                args.old.display(),
                args.new.display()
            ));
            if args.json {
                out(&format!(
                    "{}\n",
                    json!({ "changed": false, "output": null })
                ));
            }
            return Ok(3);
        }
        Analysis::Patch {
            patch,
            new_functions,
        } => (*patch, new_functions),
    };
    let bytes = ulp_runtime::write_patch(&mut patch)
        .with_context(|| format!("writing {}", args.output.display()))?;
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let explanations = if args.explain || args.json {
        explain::explain(&old, &new)
    } else {
        Vec::new()
    };
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
    for f in &patch.meta.functions {
        text += &format!("  replace {}: {}\n", f.target.name, f.reason);
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

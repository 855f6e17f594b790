//! The command lines of `ulp-apply` and `ulp-info`, defined once with clap, and the exit-code contract:
//! 0 done · 1 error · 2 refused. Errors print one line, `error: …`, on stderr.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::apply::{apply, ApplyOptions};
use crate::error::{failed, Result};
use crate::revert::revert;
use crate::{maps, memory::Memory, report, state_scan};

/// Apply a live patch to a running process, or revert one.
#[derive(Debug, Parser)]
#[command(name = "ulp-apply", version)]
pub struct ApplyArgs {
    /// Process to patch.
    #[arg(short, long)]
    pub pid: i32,
    /// The `.ulp` patch to apply.
    #[arg(required_unless_present = "revert", conflicts_with = "revert")]
    pub patch: Option<PathBuf>,
    /// Revert a patch: by id, name or number as `ulp-info -p` lists it (default: the last applied).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "PATCH")]
    pub revert: Option<String>,
    /// Seconds to wait for threads to leave the functions being replaced before refusing.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub timeout: f64,
    /// Resolve, check and link only; do not touch the process.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Describe a patch file, or list the patches applied to a process.
#[derive(Debug, Parser)]
#[command(name = "ulp-info", version)]
pub struct InfoArgs {
    /// A `.ulp` patch to describe.
    #[arg(required_unless_present = "pid", conflicts_with = "pid")]
    pub patch: Option<PathBuf>,
    /// List the patches applied to this process.
    #[arg(short, long)]
    pub pid: Option<i32>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Read and validate a patch file.
/// Largest patch file read; a patch is code and data of a few functions, far below this.
const MAX_PATCH_BYTES: u64 = 256 << 20;

pub fn read_patch_file(path: &Path) -> Result<ulp_runtime::Patch> {
    let metadata =
        std::fs::metadata(path).map_err(|e| failed!("cannot read {}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(failed!("{} is not a regular file", path.display()));
    }
    if metadata.len() > MAX_PATCH_BYTES {
        return Err(failed!(
            "{} is {} bytes, too large to be a patch",
            path.display(),
            metadata.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| failed!("cannot read {}: {e}", path.display()))?;
    ulp_runtime::read_patch(&bytes).map_err(|e| failed!("{}: {e}", path.display()))
}

fn emit(json: bool, text: String, value: serde_json::Value) {
    if json {
        println!("{value}");
    } else {
        print!("{text}");
    }
}

fn parse<T: Parser>() -> std::result::Result<T, i32> {
    T::try_parse().map_err(|e| {
        let code = if e.use_stderr() { 1 } else { 0 };
        let _ = e.print();
        code
    })
}

fn finish(result: Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("error: {line}");
            e.exit_code()
        }
    }
}

/// `ulp-apply`'s main; the exit code.
pub fn main_apply() -> i32 {
    let args = match parse::<ApplyArgs>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    finish(run_apply(&args))
}

pub fn run_apply(args: &ApplyArgs) -> Result<()> {
    if !(args.timeout.is_finite() && args.timeout >= 0.0) {
        return Err(failed!(
            "--timeout must be a number of seconds, not {}",
            args.timeout
        ));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    if let Some(id) = &args.revert {
        let id = (!id.is_empty()).then_some(id.as_str());
        let r = revert(args.pid, id, timeout)?;
        if let Some(warning) = &r.warning {
            eprintln!("warning: {warning}");
        }
        emit(args.json, report::revert_text(&r), report::revert_json(&r));
        return Ok(());
    }
    let path = args
        .patch
        .as_deref()
        .ok_or_else(|| failed!("no patch file given"))?;
    let patch = read_patch_file(path)?;
    let options = ApplyOptions {
        timeout,
        dry_run: args.dry_run,
    };
    let r = apply(args.pid, &patch, &options)?;
    emit(args.json, report::apply_text(&r), report::apply_json(&r));
    Ok(())
}

/// `ulp-info`'s main; the exit code.
pub fn main_info() -> i32 {
    let args = match parse::<InfoArgs>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    finish(run_info(&args))
}

pub fn run_info(args: &InfoArgs) -> Result<()> {
    if let Some(pid) = args.pid {
        let maps = maps::read(pid)?;
        let memory = Memory::open(pid)?;
        let patches = state_scan::applied(&maps, &memory);
        emit(
            args.json,
            report::applied_text(pid, &patches),
            report::applied_json(pid, &patches),
        );
        return Ok(());
    }
    let path = args
        .patch
        .as_deref()
        .ok_or_else(|| failed!("no patch file given"))?;
    let patch = read_patch_file(path)?;
    emit(
        args.json,
        report::patch_text(&patch),
        report::patch_json(&patch),
    );
    Ok(())
}

//! The command lines of `ulp-apply` and `ulp-info`, defined once with clap, and the exit-code contract:
//! 0 done · 1 error · 2 refused. Errors print one line, `error: …`, on stderr.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::apply::{apply, ApplyOptions};
use crate::error::{failed, Result};
use crate::revert::revert;
use crate::{fleet, interrupt, maps, memory::Memory, report, state_scan};

/// Apply a live patch to a running process, or revert one.
#[derive(Debug, Parser)]
#[command(name = "ulp-apply", version)]
pub struct ApplyArgs {
    /// Process to patch.
    #[arg(short, long, value_parser = clap::value_parser!(i32).range(1..), required_unless_present = "all")]
    pub pid: Option<i32>,
    /// Apply to every process that has this executable or library mapped (instead of `-p`).
    #[arg(long, value_name = "BIN", conflicts_with_all = ["pid", "revert", "replace"])]
    pub all: Option<PathBuf>,
    /// Swap every patch applied to the process for this (cumulative) one, in one commit.
    #[arg(long, conflicts_with = "revert")]
    pub replace: bool,
    /// The `.ulp` patch to apply.
    #[arg(required_unless_present = "revert", conflicts_with = "revert")]
    pub patch: Option<PathBuf>,
    /// Revert a patch: by id, name or number as `ulp-info -p` lists it (default: the last applied).
    #[arg(long, num_args = 0..=1, value_name = "PATCH")]
    pub revert: Option<Option<String>>,
    /// Seconds to wait for threads to leave the functions being replaced before refusing.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub timeout: f64,
    /// Resolve, check and link only; do not touch the process.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Look for separate debug files of stripped objects under DIR/.build-id/ (default /usr/lib/debug).
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Option<PathBuf>,
}

/// Describe a patch file, or list the patches applied to a process.
#[derive(Debug, Parser)]
#[command(name = "ulp-info", version)]
pub struct InfoArgs {
    /// A `.ulp` patch to describe.
    #[arg(required_unless_present = "pid", conflicts_with = "pid")]
    pub patch: Option<PathBuf>,
    /// List the patches applied to this process.
    #[arg(short, long, value_parser = clap::value_parser!(i32).range(1..))]
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

/// Print the result. A closed or full stdout is not an error of the operation, whose outcome the
/// exit code already tells, so write errors are ignored rather than allowed to panic.
fn emit(json: bool, text: String, value: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(out, "{value}")
    } else {
        write!(out, "{text}")
    };
    let _ = out.flush();
}

/// Parse the command line; on bad arguments, one `error:` line and exit 1 (help and version print
/// as usual and exit 0).
fn parse<T: Parser>() -> std::result::Result<T, i32> {
    T::try_parse().map_err(|e| {
        if !e.use_stderr() {
            let _ = e.print();
            return 0;
        }
        // clap's message is its first paragraph (some kinds list the arguments on the lines after
        // the first); the usage and tips that follow are left to --help.
        let rendered = e.to_string();
        let message: Vec<&str> = rendered
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        let message = message.join(" ");
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        eprintln!("error: {message} (see --help)");
        1
    })
}

/// `pid` must name a process (a thread group leader), not one of its other threads.
fn check_is_process(pid: i32) -> Result<()> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| failed!("process {pid} does not exist"))?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<i32>().ok());
    match tgid {
        Some(tgid) if tgid != pid => Err(failed!(
            "{pid} is a thread of process {tgid}; give the process id"
        )),
        _ => Ok(()),
    }
}

/// Longest `--timeout` accepted: a day.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

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
    if !(args.timeout.is_finite() && (0.0..=MAX_TIMEOUT_SECS).contains(&args.timeout)) {
        return Err(failed!(
            "--timeout must be between 0 and {MAX_TIMEOUT_SECS} seconds, not {:?}",
            args.timeout
        ));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let options = ApplyOptions {
        timeout,
        dry_run: args.dry_run,
        replace: args.replace,
        debug_dir: args.debug_dir.clone(),
    };
    let patch_file = || {
        read_patch_file(
            args.patch
                .as_deref()
                .ok_or_else(|| failed!("no patch file given"))?,
        )
    };
    if let Some(bin) = &args.all {
        interrupt::install()?;
        let patch = patch_file()?;
        let r = fleet::apply_all(bin, &patch, &options)?;
        emit(args.json, r.text(), r.json());
        return r.error().map_or(Ok(()), Err);
    }
    let pid = args
        .pid
        .ok_or_else(|| failed!("give -p PID or --all BIN"))?;
    check_is_process(pid)?;
    interrupt::install()?;
    if let Some(which) = &args.revert {
        if which.as_deref() == Some("") {
            return Err(failed!("--revert was given an empty patch id or name"));
        }
        let r = revert(pid, which.as_deref(), timeout)?;
        if let Some(warning) = &r.warning {
            eprintln!("warning: {warning}");
        }
        emit(args.json, report::revert_text(&r), report::revert_json(&r));
        return Ok(());
    }
    let patch = patch_file()?;
    let r = apply(pid, &patch, &options)?;
    for warning in &r.warnings {
        eprintln!("warning: {warning}");
    }
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

//! Compiling OLD and NEW: find the C compiler and build both sources at once, in parallel, with
//! `-c -ffunction-sections -fdata-sections -g` plus the user's flags, into a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("no C compiler found (tried gcc and cc on PATH); use --cc")]
    NoCompiler,
    #[error("C compiler '{0}' not found")]
    CompilerNotFound(String),
    #[error("compiling {file} failed: {first_line}")]
    Failed {
        file: String,
        first_line: String,
        /// Everything the compiler printed.
        stderr: String,
    },
    #[error("compiler {compiler} produced no object file for {file}")]
    NoObject { compiler: String, file: String },
    #[error("running {compiler}: {error}")]
    Spawn {
        compiler: String,
        error: std::io::Error,
    },
}

/// The flags every compilation gets, before the user's.
pub const BASE_FLAGS: [&str; 4] = ["-c", "-ffunction-sections", "-fdata-sections", "-g"];

/// Resolve `--cc` (a name looked up on PATH, or a path), else `gcc` or `cc` on PATH.
pub fn find_compiler(cc: Option<&str>) -> Result<PathBuf, CompileError> {
    match cc {
        Some(cc) if cc.contains('/') => {
            let path = PathBuf::from(cc);
            if path.is_file() {
                Ok(path)
            } else {
                Err(CompileError::CompilerNotFound(cc.to_string()))
            }
        }
        Some(cc) => which::which(cc).map_err(|_| CompileError::CompilerNotFound(cc.to_string())),
        None => which::which("gcc")
            .or_else(|_| which::which("cc"))
            .map_err(|_| CompileError::NoCompiler),
    }
}

/// Split repeated `--cflags` values on whitespace.
pub fn split_flags(cflags: &[String]) -> Vec<String> {
    cflags
        .iter()
        .flat_map(|f| f.split_whitespace())
        .map(str::to_string)
        .collect()
}

/// Compile `source` to `output`.
pub fn compile(
    compiler: &Path,
    flags: &[String],
    source: &Path,
    output: &Path,
) -> Result<(), CompileError> {
    run_job(&Job::simple(compiler, flags, source, output))
}

/// Compile OLD and NEW in parallel into `dir` (as `old.o` and `new.o`); returns their paths.
/// When both fail, OLD's error is reported.
pub fn compile_pair(
    compiler: &Path,
    flags: &[String],
    old: &Path,
    new: &Path,
    dir: &Path,
) -> Result<(PathBuf, PathBuf), CompileError> {
    let (old_out, new_out) = (dir.join("old.o"), dir.join("new.o"));
    let (old_result, new_result) = std::thread::scope(|scope| {
        let old_job = scope.spawn(|| compile(compiler, flags, old, &old_out));
        let new_result = compile(compiler, flags, new, &new_out);
        (old_job.join(), new_result)
    });
    match old_result {
        Ok(result) => result?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    new_result?;
    Ok((old_out, new_out))
}

/// One compilation: `program args… -o output`, run in `directory` when given. `source` names the
/// unit in messages.
#[derive(Debug, Clone)]
pub struct Job {
    pub program: PathBuf,
    /// Every argument except `-o OUTPUT` (which [`run_job`] appends).
    pub args: Vec<String>,
    pub directory: Option<PathBuf>,
    pub source: PathBuf,
    pub output: PathBuf,
}

impl Job {
    /// The job `compile` runs: base flags, the user's flags and the source.
    pub fn simple(compiler: &Path, flags: &[String], source: &Path, output: &Path) -> Job {
        let mut args: Vec<String> = BASE_FLAGS.iter().map(|f| f.to_string()).collect();
        args.extend(flags.iter().cloned());
        args.push(source.display().to_string());
        Job {
            program: compiler.to_path_buf(),
            args,
            directory: None,
            source: source.to_path_buf(),
            output: output.to_path_buf(),
        }
    }
}

/// Run one compilation job.
pub fn run_job(job: &Job) -> Result<(), CompileError> {
    let mut command = Command::new(&job.program);
    command.args(&job.args).arg("-o").arg(&job.output);
    if let Some(dir) = &job.directory {
        command.current_dir(dir);
    }
    // The compiler's own temporary files go next to the object, into our temporary directory, so
    // that an interrupt (which kills the compiler outright) leaves none of them behind either.
    if let Some(objects) = job.output.parent() {
        command.env("TMPDIR", objects);
    }
    let result = crate::interrupt::output(&mut command).map_err(|error| CompileError::Spawn {
        compiler: job.program.display().to_string(),
        error,
    })?;
    if result.status.success() {
        // A "compiler" that exits 0 without writing the object (`--cc true`) is an error of its own.
        if !job.output.is_file() {
            return Err(CompileError::NoObject {
                compiler: job.program.display().to_string(),
                file: job.source.display().to_string(),
            });
        }
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    let first_line = stderr
        .lines()
        .find(|l| l.contains("error"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("compiler exited with {}", result.status));
    Err(CompileError::Failed {
        file: job.source.display().to_string(),
        first_line,
        stderr,
    })
}

/// How many jobs run at once: the machine's available parallelism (at least 1).
pub fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Run `jobs` in parallel, at most [`parallelism`] at a time; results in the order of `jobs`.
pub fn run_all(jobs: &[Job]) -> Vec<Result<(), CompileError>> {
    run_parallel(jobs, parallelism(), run_job)
}

/// Apply `work` to every item on at most `limit` threads; results in the order of `items`.
pub fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    limit: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..limit.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let result = work(item);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .ok()
                .flatten()
                .expect("every item was processed")
        })
        .collect()
}

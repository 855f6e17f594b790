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
    let result = Command::new(compiler)
        .args(BASE_FLAGS)
        .args(flags)
        .arg("-o")
        .arg(output)
        .arg(source)
        .output()
        .map_err(|error| CompileError::Spawn {
            compiler: compiler.display().to_string(),
            error,
        })?;
    if result.status.success() {
        // A "compiler" that exits 0 without writing the object (`--cc true`) is an error of its own.
        if !output.is_file() {
            return Err(CompileError::NoObject {
                compiler: compiler.display().to_string(),
                file: source.display().to_string(),
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
        file: source.display().to_string(),
        first_line,
        stderr,
    })
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

//! The translation units a patch is built from: the positional `OLD NEW` pair, repeated
//! `--pair OLD:NEW`, or the units distro mode rebuilds (see [`crate::distro`]). Every unit is compiled
//! twice (OLD and NEW); all compilations of all units run in parallel, at most
//! `available_parallelism` at a time.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::compile::{run_all, Job};
use crate::object_model::{self, ObjectModel};

/// One translation unit: how to compile its OLD and NEW source.
#[derive(Debug, Clone)]
pub struct Unit {
    /// OLD source, as the user named it (messages).
    pub old: PathBuf,
    /// NEW source, as the user named it (messages).
    pub new: PathBuf,
    /// The files holding OLD's and NEW's source text (in distro mode, inside the tree copies; `old`
    /// and `new` name them for people), read for the `__LINE__` rule.
    pub old_text: PathBuf,
    pub new_text: PathBuf,
    /// Base name of the OLD source: the `STT_FILE` name of the unit in the running program, recorded
    /// as `TargetSymbol::file` for its local symbols.
    pub file: String,
    pub old_job: Job,
    pub new_job: Job,
}

/// Base name of `path` (the whole path when it has none).
pub fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Split a `--pair` value `OLD:NEW`. A path may itself contain `:`: the first split where both sides
/// exist wins, else the first `:`.
pub fn parse_pair(value: &str) -> Result<(PathBuf, PathBuf)> {
    let splits: Vec<usize> = value.match_indices(':').map(|(i, _)| i).collect();
    let Some(&first) = splits.first() else {
        bail!("--pair {value}: expected OLD:NEW");
    };
    let at = splits
        .iter()
        .copied()
        .find(|&i| Path::new(&value[..i]).exists() && Path::new(&value[i + 1..]).exists())
        .unwrap_or(first);
    let (old, new) = (&value[..at], &value[at + 1..]);
    if old.is_empty() || new.is_empty() {
        bail!("--pair {value}: expected OLD:NEW");
    }
    Ok((PathBuf::from(old), PathBuf::from(new)))
}

/// Check that a source named on the command line is a regular file.
pub fn check_source(source: &Path) -> Result<()> {
    match std::fs::metadata(source) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => bail!("{} is not a regular file", source.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: no such file", source.display())
        }
        Err(e) => bail!("{}: {e}", source.display()),
    }
}

/// A unit compiled the simple way (`CC -c -ffunction-sections -fdata-sections -g FLAGS SOURCE`), its
/// objects as `<index>.old.o` and `<index>.new.o` in `dir`. NEW also gets
/// `-fmacro-prefix-map=NEW=OLD`: `__FILE__` then names OLD in both, while NEW's DWARF still names
/// NEW (explanations and refusals read NEW's source lines through it).
pub fn simple_unit(
    compiler: &Path,
    flags: &[String],
    old: &Path,
    new: &Path,
    index: usize,
    dir: &Path,
) -> Unit {
    let mut new_job = Job::simple(compiler, flags, new, &dir.join(format!("{index}.new.o")));
    if old != new {
        // NEW compiled as if it were OLD: `__FILE__` (assert, log macros) names OLD's path, so a
        // NEW that only lives elsewhere is no change.
        let position = new_job.args.len() - 1;
        new_job.args.insert(
            position,
            format!("-fmacro-prefix-map={}={}", new.display(), old.display()),
        );
    }
    Unit {
        old: old.to_path_buf(),
        new: new.to_path_buf(),
        old_text: old.to_path_buf(),
        new_text: new.to_path_buf(),
        file: base_name(old),
        old_job: Job::simple(compiler, flags, old, &dir.join(format!("{index}.old.o"))),
        new_job,
    }
}

/// Compile every unit (OLD and NEW) in parallel. When several fail, the first in unit order (OLD
/// before NEW) is reported.
pub fn compile_units(units: &[Unit]) -> Result<()> {
    let jobs: Vec<Job> = units
        .iter()
        .flat_map(|u| [u.old_job.clone(), u.new_job.clone()])
        .collect();
    for result in run_all(&jobs) {
        result?;
    }
    Ok(())
}

/// Parse a compiled object; `source` names it in errors.
pub fn parse_object(path: &Path, source: &Path, file: &str) -> Result<ObjectModel> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if object_model::is_lto(&bytes) {
        bail!(
            "{} was compiled to LTO bytecode (-flto), which has no machine code to compare; \
             build the patch without -flto",
            source.display()
        );
    }
    ObjectModel::parse(&bytes, file).with_context(|| format!("object of {}", source.display()))
}

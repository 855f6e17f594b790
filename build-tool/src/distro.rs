//! Distro mode: `--source DIR --diff FIX.patch --compile-commands compile_commands.json`.
//!
//! DIR is copied twice into a temporary directory (`old/`, `new/`); the unified diff is applied to
//! `new/` with the system `patch` program (`patch -pN --batch`); the translation units the diff
//! touches are found (a changed source file that `compile_commands.json` lists, or every listed unit
//! whose dependencies, from the compiler's `-MM`, include a changed header) and only those are
//! rebuilt, in both copies, with their recorded commands adjusted: the recorded `-o`, `-c` and
//! dependency-file flags are dropped; `-c -ffunction-sections -fdata-sections -g`,
//! `-ffile-prefix-map=COPY=DIR` (so `__FILE__` and the objects name DIR, not the copy) and `-o OBJECT`
//! are added; paths under DIR in the arguments and the recorded `directory` are mapped into the copy.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::compile::{parallelism, run_parallel, Job};
use crate::inputs::{base_name, Unit};

/// One entry of `compile_commands.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub directory: PathBuf,
    pub file: PathBuf,
    #[serde(default)]
    pub arguments: Option<Vec<String>>,
    #[serde(default)]
    pub command: Option<String>,
}

impl Entry {
    /// The command as separate arguments (`arguments`, else `command` split like a shell).
    pub fn argv(&self) -> Result<Vec<String>> {
        let argv = match (&self.arguments, &self.command) {
            (Some(arguments), _) => arguments.clone(),
            (None, Some(command)) => shell_words(command)?,
            (None, None) => bail!("has neither 'arguments' nor 'command'"),
        };
        if argv.is_empty() {
            bail!("has an empty command");
        }
        Ok(argv)
    }

    /// The unit's source file, absolute and lexically normalized.
    pub fn source(&self) -> PathBuf {
        normalize(&self.directory.join(&self.file))
    }
}

/// Split a shell command line into words: whitespace separates; `'…'` is literal; `"…"` with `\`
/// escaping `"`, `\`, `$` and `` ` ``; `\` outside quotes escapes the next character.
pub fn shell_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => bail!("unterminated ' in command"),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => bail!("unterminated \" in command"),
                        },
                        Some(c) => w.push(c),
                        None => bail!("unterminated \" in command"),
                    }
                }
            }
            '\\' => {
                if let Some(c) = chars.next() {
                    word.get_or_insert_with(String::new).push(c);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Remove `.` and resolve `..` without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c.as_os_str()),
        }
    }
    out
}

/// Read `compile_commands.json`.
pub fn read_compile_commands(path: &Path) -> Result<Vec<Entry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut entries: Vec<Entry> = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a compilation database: {e}", path.display()))?;
    // A relative `directory` is taken relative to the database's own directory. Directories and
    // files are made canonical (no symlinks, no `..`), so that paths under the source tree are
    // recognised as such and mapped into its copies.
    let base = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    for entry in &mut entries {
        let directory = base.join(&entry.directory);
        entry.directory = directory.canonicalize().with_context(|| {
            format!(
                "{}: directory {} of {} does not exist",
                path.display(),
                directory.display(),
                entry.file.display()
            )
        })?;
        if let Ok(file) = entry.directory.join(&entry.file).canonicalize() {
            entry.file = file;
        }
    }
    Ok(entries)
}

/// One file a unified diff changes: its path before and after (`None` for `/dev/null`), with the
/// `--- `/`+++ ` prefix and any tab-separated timestamp removed, not yet stripped of leading
/// components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The files a unified diff changes.
pub fn diff_files(diff: &str) -> Vec<FileChange> {
    let name = |line: &str| -> Option<String> {
        let path = line.split('\t').next().unwrap_or(line).trim_end();
        (path != "/dev/null" && !path.is_empty()).then(|| path.to_string())
    };
    let lines: Vec<&str> = diff.lines().collect();
    let mut files = Vec::new();
    for pair in lines.windows(2) {
        if let (Some(old), Some(new)) = (pair[0].strip_prefix("--- "), pair[1].strip_prefix("+++ "))
        {
            files.push(FileChange {
                old: name(old),
                new: name(new),
            });
        }
    }
    files
}

/// `path` without its first `strip` components (`None` when it has no more than that).
pub fn strip_components(path: &str, strip: usize) -> Option<PathBuf> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (parts.len() > strip).then(|| parts[strip..].iter().collect())
}

/// The `-p` level: 1 for `a/…`/`b/…` diffs (git, `diff -ru a b`) when that names files of DIR, else
/// the smallest level (0–3) at which every file the diff modifies or deletes exists in DIR.
pub fn detect_strip(files: &[FileChange], dir: &Path) -> Option<usize> {
    let exists_at = |strip: usize| {
        files.iter().all(|f| match &f.old {
            Some(old) => strip_components(old, strip).is_some_and(|p| dir.join(p).exists()),
            None => f
                .new
                .as_ref()
                .is_some_and(|n| strip_components(n, strip).is_some()),
        })
    };
    let git_style = files.iter().all(|f| {
        f.old.as_ref().is_none_or(|p| p.starts_with("a/"))
            && f.new.as_ref().is_none_or(|p| p.starts_with("b/"))
    });
    if git_style && exists_at(1) {
        return Some(1);
    }
    (0..=3).find(|&strip| exists_at(strip))
}

/// Copy the tree `from` to `to` (skipping `.git`); symbolic links are copied as links.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", from.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .with_context(|| format!("reading {}", source.display()))?;
        if kind.is_symlink() {
            let link = std::fs::read_link(&source)
                .with_context(|| format!("reading {}", source.display()))?;
            std::os::unix::fs::symlink(link, &target)
                .with_context(|| format!("copying {}", source.display()))?;
        } else if kind.is_dir() {
            if entry.file_name() != ".git" {
                copy_tree(&source, &target)?;
            }
        } else if kind.is_file() {
            std::fs::copy(&source, &target)
                .with_context(|| format!("copying {}", source.display()))?;
        }
    }
    Ok(())
}

/// Apply `diff` to the tree `dir` with `patch -pSTRIP --batch`; errors name the diff.
pub fn apply_diff(diff: &Path, dir: &Path, strip: usize) -> Result<()> {
    let patch = which::which("patch").map_err(|_| {
        anyhow::anyhow!("--diff needs the 'patch' program on PATH (Debian package: patch)")
    })?;
    let diff_abs =
        std::path::absolute(diff).with_context(|| format!("reading {}", diff.display()))?;
    let mut command = Command::new(patch);
    command
        .arg(format!("-p{strip}"))
        .args([
            "--batch",
            "--forward",
            "--no-backup-if-mismatch",
            "-s",
            "-i",
        ])
        .arg(&diff_abs)
        .current_dir(dir);
    let output = crate::interrupt::output(&mut command)
        .with_context(|| format!("running patch on {}", diff.display()))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let reason = |needle: &str| text.lines().find(|l| l.contains(needle));
        let first = if reason("can't find file").is_some() || reason("No file to patch").is_some() {
            format!("a file it changes is not in the tree at -p{strip} (wrong --strip?)")
        } else {
            ["FAILED", "Reversed", "malformed", "rror"]
                .iter()
                .find_map(|needle| reason(needle))
                .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
                .unwrap_or("patch failed")
                .trim()
                .to_string()
        };
        bail!(
            "{} does not apply to the source tree: {first}",
            diff.display()
        );
    }
    Ok(())
}

/// Flags that make the compiler write dependency files; dropped (with their argument when they take
/// one) from recorded commands.
fn is_dependency_flag(arg: &str) -> Option<bool> {
    match arg {
        "-MD" | "-MMD" | "-MP" | "-M" | "-MM" | "-MG" => Some(false),
        "-MF" | "-MT" | "-MQ" => Some(true),
        a if a.starts_with("-Wp,-MD") || a.starts_with("-Wp,-MMD") => Some(false),
        a if a.starts_with("-MF") || a.starts_with("-MT") || a.starts_with("-MQ") => Some(false),
        _ => None,
    }
}

/// Replace the prefix `from` by `to` in every argument that names a path under `from` (alone, or
/// after a flag such as `-I`).
fn map_arg(arg: &str, from: &str, to: &str) -> String {
    match arg.find(from) {
        Some(at)
            if arg[at + from.len()..].is_empty()
                || arg[at + from.len()..].starts_with(['/', '=', ':']) =>
        {
            format!("{}{to}{}", &arg[..at], &arg[at + from.len()..])
        }
        _ => arg.to_string(),
    }
}

/// A recorded command, adjusted to compile in the copy `copy` of `dir` into `output`.
pub fn adjust(
    entry: &Entry,
    dir: &Path,
    copy: &Path,
    extra: &[&str],
    output: Option<&Path>,
) -> Result<(PathBuf, Vec<String>, PathBuf)> {
    let argv = entry.argv()?;
    let (from, to) = (dir.display().to_string(), copy.display().to_string());
    // First, so that a prefix map of the recorded command (Debian's `-ffile-prefix-map=DIR=.`,
    // mapped to the copy below) comes later and wins, as it did in the original build.
    let mut args = vec![format!("-ffile-prefix-map={to}={from}")];
    let mut rest = argv[1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "-o" || arg == "-c" {
            if arg == "-o" {
                rest.next();
            }
            continue;
        }
        if arg.starts_with("-o") {
            continue;
        }
        match is_dependency_flag(arg) {
            Some(true) => {
                rest.next();
            }
            Some(false) => {}
            None => args.push(map_arg(arg, &from, &to)),
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    if let Some(output) = output {
        args.push("-o".to_string());
        args.push(output.display().to_string());
    }
    let directory = PathBuf::from(map_arg(&entry.directory.display().to_string(), &from, &to));
    Ok((PathBuf::from(&argv[0]), args, directory))
}

/// Everything distro mode prepared: the units to analyse and the temporary directory holding the
/// copies and objects (dropped at the end).
pub struct Prepared {
    pub units: Vec<Unit>,
    /// Changed files no unit uses (ignored; the caller warns).
    pub unused: Vec<PathBuf>,
    pub temp: tempfile::TempDir,
}

/// Prepare distro mode: copy, apply, select the touched units and make their compile jobs.
pub fn prepare(
    source: &Path,
    diff: &Path,
    compile_commands: &Path,
    strip: Option<usize>,
) -> Result<Prepared> {
    let dir = source
        .canonicalize()
        .with_context(|| format!("{}: no such directory", source.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", source.display());
    }
    let diff_text = std::fs::read(diff)
        .with_context(|| format!("reading {}", diff.display()))
        .map(|b| String::from_utf8_lossy(&b).into_owned())?;
    if let Some(line) = diff_text
        .lines()
        .find(|l| l.starts_with("rename from ") || l.starts_with("copy from "))
    {
        bail!(
            "{} renames or copies files ({}); a live patch changes code, not which files a build \
             has: make a diff without renames",
            diff.display(),
            line.trim()
        );
    }
    let files = diff_files(&diff_text);
    if files.is_empty() {
        bail!(
            "{} is not a unified diff (no ---/+++ lines)",
            diff.display()
        );
    }
    let strip = match strip {
        Some(strip) => strip,
        None => detect_strip(&files, &dir).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: cannot tell which -p level names files of {}; use --strip N",
                diff.display(),
                source.display()
            )
        })?,
    };
    let entries = read_compile_commands(compile_commands)?;
    let temp = crate::interrupt::temp_dir().context("creating a temporary directory")?;
    let (old_copy, new_copy) = (temp.path().join("old"), temp.path().join("new"));
    copy_tree(&dir, &old_copy)?;
    copy_tree(&dir, &new_copy)?;
    apply_diff(diff, &new_copy, strip)?;

    // The files the diff changes, relative to DIR.
    let mut changed: BTreeSet<PathBuf> = BTreeSet::new();
    for f in &files {
        for path in [&f.old, &f.new].into_iter().flatten() {
            if let Some(rel) = strip_components(path, strip) {
                changed.insert(normalize(&rel));
            }
        }
    }
    // Units of compile_commands.json by their source relative to DIR (units outside DIR are not
    // rebuilt).
    let mut listed: Vec<(PathBuf, &Entry)> = Vec::new();
    for entry in &entries {
        let source = entry.source();
        let source = source.canonicalize().unwrap_or(source);
        if let Ok(rel) = source.strip_prefix(&dir) {
            listed.push((rel.to_path_buf(), entry));
        }
    }
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut selected: BTreeSet<PathBuf> = BTreeSet::new();
    let mut others: Vec<PathBuf> = Vec::new();
    for rel in &changed {
        if listed.iter().any(|(r, _)| r == rel) {
            selected.insert(rel.clone());
        } else if is_source_file(rel) {
            bail!(
                "{} is changed by {} but is not a unit of {}",
                rel.display(),
                diff.display(),
                compile_commands.display()
            );
        } else {
            others.push(rel.clone());
        }
    }
    let mut unused = Vec::new();
    if !others.is_empty() {
        // Which units include the changed headers (in OLD or NEW)?
        let deps_dir = temp.path().join("deps");
        std::fs::create_dir_all(&deps_dir).context("creating a temporary directory")?;
        let probes: Vec<(usize, &Path)> = (0..listed.len())
            .flat_map(|i| [(i, old_copy.as_path()), (i, new_copy.as_path())])
            .collect();
        let results = run_parallel(&probes, parallelism(), |&(i, copy)| {
            dependencies(
                listed[i].1,
                &dir,
                copy,
                &deps_dir.join(format!("{i}.{}.d", base_name(copy))),
            )
        });
        let mut used: BTreeSet<PathBuf> = BTreeSet::new();
        for (&(i, _), result) in probes.iter().zip(results) {
            let deps = result
                .with_context(|| format!("finding the headers of {}", listed[i].0.display()))?;
            for header in &others {
                if deps.contains(header) {
                    selected.insert(listed[i].0.clone());
                    used.insert(header.clone());
                }
            }
        }
        unused = others.into_iter().filter(|h| !used.contains(h)).collect();
    }

    let objects = temp.path().join("objects");
    std::fs::create_dir_all(&objects).context("creating a temporary directory")?;
    let mut units = Vec::new();
    for (index, rel) in selected.iter().enumerate() {
        let Some((_, entry)) = listed.iter().find(|(r, _)| r == rel) else {
            continue;
        };
        let job = |copy: &Path, side: &str, shown: PathBuf| -> Result<Job> {
            let output = objects.join(format!("{index}.{side}.o"));
            let (program, args, directory) =
                adjust(entry, &dir, copy, &crate::compile::BASE_FLAGS, None).with_context(
                    || format!("{}: {}", compile_commands.display(), rel.display()),
                )?;
            Ok(Job {
                program,
                args,
                directory: Some(directory),
                source: shown,
                output,
            })
        };
        let old_shown = source.join(rel);
        let new_shown = PathBuf::from(format!("{} (patched)", source.join(rel).display()));
        units.push(Unit {
            old: old_shown.clone(),
            new: new_shown.clone(),
            old_text: old_copy.join(rel),
            new_text: new_copy.join(rel),
            file: base_name(rel),
            old_job: job(&old_copy, "old", old_shown)?,
            new_job: job(&new_copy, "new", new_shown)?,
        });
    }
    Ok(Prepared {
        units,
        unused,
        temp,
    })
}

/// Whether `path` is a C/C++/assembler source (a translation unit, not a header).
fn is_source_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("c" | "cc" | "cpp" | "cxx" | "C" | "S" | "s" | "m")
    )
}

/// The files under DIR that `entry`'s unit depends on in the copy `copy` (from `-MM`), relative.
fn dependencies(
    entry: &Entry,
    dir: &Path,
    copy: &Path,
    depfile: &Path,
) -> Result<BTreeSet<PathBuf>> {
    let (program, mut args, directory) = adjust(entry, dir, copy, &[], None)?;
    args.extend(["-MM".to_string(), "-MF".to_string()]);
    args.push(depfile.display().to_string());
    let output =
        crate::interrupt::output(Command::new(&program).args(&args).current_dir(&directory))
            .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{}",
            stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("the compiler failed")
        );
    }
    let text = std::fs::read_to_string(depfile)
        .with_context(|| format!("reading {}", depfile.display()))?;
    let text = text.replace("\\\n", " ");
    let mut deps = BTreeSet::new();
    for line in text.lines() {
        let Some((_, list)) = line.split_once(": ") else {
            continue;
        };
        for word in shell_words(&list.replace("\\ ", "\u{0}"))? {
            let path = PathBuf::from(word.replace('\u{0}', " "));
            let path = normalize(&directory.join(path));
            if let Ok(rel) = path.strip_prefix(copy).or_else(|_| path.strip_prefix(dir)) {
                deps.insert(rel.to_path_buf());
            }
        }
    }
    Ok(deps)
}

//! Which loaded object a patch applies to, and where its symbols come from.
//!
//! A patch names its object in `meta.target.object` (`None`: the main executable). A name matches a
//! loaded shared library by the base name of its mapped file, by its `DT_SONAME`, or as the
//! development name of either (`libz.so` matches `libz.so.1` and `libz.so.1.3.1`). When the patch
//! records a build-id, the chosen object's build-id must equal it (exit 2 otherwise).
//!
//! A stripped object (no `.symtab`) gets the `.symtab` of its separate debug file, found by build-id
//! under a debug root: `ROOT/.build-id/xx/yyyy….debug` (`/usr/lib/debug` unless `--debug-dir`).
//! Debug files keep the object's link-time addresses, so the same bias applies.

use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;
use object::{Object, ObjectSection};

use ulp_runtime::meta::TargetObject;

use crate::error::{refused, Result};
use crate::symbols::{ElfImage, LoadedObject, Target};

/// Where separate debug files are looked up by default.
pub const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";

/// `DT_SONAME` of an ELF file, read from `.dynamic` and `.dynstr`.
pub fn soname(file: &ElfFile64<'_, object::Endianness>) -> Option<String> {
    let dynamic = file.section_by_name(".dynamic")?.data().ok()?;
    let dynstr = file.section_by_name(".dynstr")?.data().ok()?;
    let offset = dynamic.chunks_exact(16).find_map(|entry| {
        let tag = u64::from_le_bytes(entry[..8].try_into().ok()?);
        (tag == u64::from(object::elf::DT_SONAME))
            .then(|| u64::from_le_bytes(entry[8..].try_into().unwrap_or_default()))
    })? as usize;
    let rest = dynstr.get(offset..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether the patch's object name `want` designates the file `have` (a base name or soname):
/// equal, or `want` is its development name (`libz.so` for `libz.so.1.3.1`).
fn name_matches(want: &str, have: &str) -> bool {
    have == want
        || (want.ends_with(".so")
            && have
                .strip_prefix(want)
                .is_some_and(|rest| rest.starts_with('.')))
}

/// Whether library `object` is the one named `want`.
pub fn matches(object: &LoadedObject, want: &str) -> bool {
    let want = base_name(want);
    name_matches(want, base_name(&object.path))
        || object
            .image
            .soname
            .as_deref()
            .is_some_and(|s| name_matches(want, s))
}

/// Choose the object `target` (the patch's `meta.target`) names in process `pid`, check its
/// build-id, and give it separate debug symbols when it is stripped.
pub fn select(
    target: &mut Target,
    wanted: &TargetObject,
    patch_id: &str,
    debug_dir: Option<&Path>,
) -> Result<()> {
    let pid = target.pid;
    if let Some(name) = &wanted.object {
        let candidates: Vec<usize> = target
            .libraries
            .iter()
            .enumerate()
            .filter(|(_, l)| matches(l, name))
            .map(|(i, _)| i)
            .collect();
        if candidates.is_empty() {
            return Err(refused!(
                "patch {patch_id} targets shared library '{name}', which process {pid} has not loaded"
            ));
        }
        // Several libraries of that name (a versioned pair): the build-id decides.
        let chosen = wanted
            .build_id
            .as_ref()
            .and_then(|want| {
                candidates
                    .iter()
                    .copied()
                    .find(|&i| target.libraries[i].image.build_id.as_ref() == Some(want))
            })
            .unwrap_or(candidates[0]);
        target.patched = Some(chosen);
    } else {
        target.patched = None;
    }
    let object = target.patched_object();
    if let (Some(want), Some(have)) = (&wanted.build_id, &object.image.build_id) {
        if want != have {
            return Err(refused!(
                "patch {patch_id} is for build-id {want}, but process {pid} runs {} with build-id {have}",
                object.path
            ));
        }
    }
    if wanted.build_id.is_some() && object.image.build_id.is_none() {
        return Err(refused!(
            "patch {patch_id} is bound to a build-id, but {} in process {pid} has none",
            object.path
        ));
    }
    let root = debug_dir.unwrap_or(Path::new(DEFAULT_DEBUG_DIR));
    attach_debug_symbols(&mut target.patched_object_mut().image, root);
    Ok(())
}

/// The debug file of build-id `id` under `root`.
pub fn debug_file_path(root: &Path, id: &str) -> Option<PathBuf> {
    if id.len() < 3 {
        return None;
    }
    Some(
        root.join(".build-id")
            .join(&id[..2])
            .join(format!("{}.debug", &id[2..])),
    )
}

/// Give a stripped `image` the `.symtab` of its debug file, when one with the same build-id exists
/// under `root`. Returns the file used.
pub fn attach_debug_symbols(image: &mut ElfImage, root: &Path) -> Option<PathBuf> {
    if !image.symtab.is_empty() {
        return None;
    }
    let id = image.build_id.clone()?;
    let path = debug_file_path(root, &id)?;
    let data = std::fs::read(&path).ok()?;
    let debug = ElfImage::parse(&data, &path.display().to_string()).ok()?;
    // A debug file of another build would give wrong addresses.
    if debug.build_id.as_deref() != Some(id.as_str()) || debug.symtab.is_empty() {
        return None;
    }
    image.symtab = debug.symtab;
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_names_match_versioned_files() {
        assert!(name_matches("libz.so", "libz.so"));
        assert!(name_matches("libz.so", "libz.so.1"));
        assert!(name_matches("libz.so", "libz.so.1.3.1"));
        assert!(name_matches("libz.so.1", "libz.so.1"));
        assert!(!name_matches("libz.so.1", "libz.so.1.3.1"));
        assert!(!name_matches("libz.so", "libzstd.so.1"));
        assert!(!name_matches("libz.so", "libz.something"));
    }

    #[test]
    fn debug_files_are_found_by_build_id() {
        assert_eq!(
            debug_file_path(Path::new("/usr/lib/debug"), "ab12cd"),
            Some(PathBuf::from("/usr/lib/debug/.build-id/ab/12cd.debug"))
        );
        assert_eq!(debug_file_path(Path::new("/d"), "ab"), None);
    }
}

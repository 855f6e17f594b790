//! `--target BIN`: binds a patch to one binary. Records BIN's GNU build-id (and its file name when BIN
//! is a shared library) in `meta.target`, and checks at build time what the applier would otherwise
//! find only at apply time: every replaced function is in BIN's `.symtab` with OLD's size and room for
//! the jump, and every symbol the patch refers to resolves in BIN (defined in `.symtab`, or imported
//! from a library through `.dynsym`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, SymbolKind};
use ulp_runtime::meta::{Binding, TargetObject, TargetSymbol};
use ulp_runtime::x86_64::min_patchable_size;
use ulp_runtime::Patch;

/// One defined symbol of BIN.
#[derive(Debug, Clone, Copy)]
struct Defined {
    address: u64,
    size: u64,
}

/// What `--target` needs to know about BIN.
#[derive(Debug, Default)]
pub struct Binary {
    /// `Some(file name)` for a shared library; `None` for an executable.
    pub object: Option<String>,
    pub build_id: Option<String>,
    has_symtab: bool,
    /// Local symbols by (file, name), in symbol-table order.
    locals: BTreeMap<(String, String), Vec<Defined>>,
    /// Defined global and weak symbols (`.symtab` and `.dynsym`).
    globals: BTreeMap<String, Defined>,
    /// Names BIN imports (undefined in `.symtab` or `.dynsym`).
    imports: BTreeSet<String>,
    /// Executable sections: (address, bytes).
    code: Vec<(u64, Vec<u8>)>,
}

impl Binary {
    /// Read BIN; errors (exit 1) name it.
    pub fn read(path: &Path) -> Result<Binary> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file = ElfFile64::<Endianness>::parse(&*bytes)
            .map_err(|e| anyhow::anyhow!("{} is not an x86_64 ELF binary ({e})", path.display()))?;
        if file.architecture() != object::Architecture::X86_64 {
            bail!("{} is not an x86_64 ELF binary", path.display());
        }
        let endian = file.endian();
        let header = file.elf_header();
        let e_type = header.e_type(endian);
        if e_type != elf::ET_EXEC && e_type != elf::ET_DYN {
            bail!(
                "{} is not an executable or shared library (ELF type {e_type})",
                path.display()
            );
        }
        let interpreter = file
            .elf_program_headers()
            .iter()
            .any(|p| p.p_type(endian) == elf::PT_INTERP);
        let shared = e_type == elf::ET_DYN && (!interpreter || has_soname(&file));
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let Some(build_id) = build_id else {
            bail!(
                "{} has no GNU build-id to bind the patch to (link it with -Wl,--build-id)",
                path.display()
            );
        };
        let mut binary = Binary {
            object: shared.then(|| {
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            build_id: Some(build_id),
            has_symtab: file.symbols().next().is_some(),
            ..Binary::default()
        };
        let mut current_file = String::new();
        for symbol in file.symbols() {
            let name = symbol.name().unwrap_or_default().to_string();
            if symbol.kind() == SymbolKind::File {
                current_file = name;
                continue;
            }
            if name.is_empty() || symbol.kind() == SymbolKind::Section {
                continue;
            }
            if symbol.is_undefined() {
                binary.imports.insert(name);
                continue;
            }
            let defined = Defined {
                address: symbol.address(),
                size: symbol.size(),
            };
            if symbol.is_local() {
                binary
                    .locals
                    .entry((current_file.clone(), name))
                    .or_default()
                    .push(defined);
            } else {
                binary.globals.entry(name).or_insert(defined);
            }
        }
        for symbol in file.dynamic_symbols() {
            let name = symbol.name().unwrap_or_default().to_string();
            if name.is_empty() {
                continue;
            }
            if symbol.is_undefined() {
                binary.imports.insert(name);
            } else if !symbol.is_local() {
                binary.globals.entry(name).or_insert(Defined {
                    address: symbol.address(),
                    size: symbol.size(),
                });
            }
        }
        for section in file.sections() {
            if section.kind() == object::SectionKind::Text {
                if let Ok(data) = section.data() {
                    binary.code.push((section.address(), data.to_vec()));
                }
            }
        }
        Ok(binary)
    }

    fn find(&self, symbol: &TargetSymbol) -> Option<Defined> {
        match (symbol.binding, &symbol.file) {
            (Binding::Local, Some(file)) => self
                .locals
                .get(&(file.clone(), symbol.name.clone()))
                .and_then(|all| all.get(symbol.position as usize))
                .copied(),
            _ => self.globals.get(&symbol.name).copied(),
        }
    }

    fn entry(&self, address: u64) -> Option<&[u8]> {
        self.code.iter().find_map(|(start, data)| {
            let offset = address.checked_sub(*start)?;
            data.get(usize::try_from(offset).ok()?..)
        })
    }

    /// Check `patch` against BIN; one reason per problem (exit 2), empty when it fits.
    pub fn check(&self, patch: &Patch, bin: &Path) -> Vec<String> {
        let name = bin.display();
        if !self.has_symtab {
            return vec![format!(
                "{name} has no symbol table (stripped); the replaced functions cannot be checked"
            )];
        }
        let mut reasons = Vec::new();
        for function in &patch.meta.functions {
            let what = describe(&function.target);
            let Some(found) = self.find(&function.target) else {
                reasons.push(format!(
                    "function {what} is not in {name} (is it the binary OLD was built for?)"
                ));
                continue;
            };
            if found.size != function.original_size {
                reasons.push(format!(
                    "function {what} is {} bytes in {name} but {} bytes in OLD (built with other \
                     flags?)",
                    found.size, function.original_size
                ));
                continue;
            }
            let entry = self.entry(found.address).unwrap_or_default();
            let needed = min_patchable_size(entry);
            if found.size < needed {
                reasons.push(format!(
                    "function {what} is {} bytes in {name}, too small for a {needed}-byte jump",
                    found.size
                ));
            }
        }
        for reference in &patch.meta.references {
            let resolves = self.find(reference).is_some()
                || (reference.binding != Binding::Local && self.imports.contains(&reference.name));
            if !resolves {
                reasons.push(format!(
                    "symbol {} the patch refers to does not resolve in {name}",
                    describe(reference)
                ));
            }
        }
        reasons
    }

    /// What `meta.target` records.
    pub fn target_object(&self) -> TargetObject {
        TargetObject {
            object: self.object.clone(),
            build_id: self.build_id.clone(),
        }
    }
}

/// `'name'`, with `(file)` for locals.
fn describe(symbol: &TargetSymbol) -> String {
    match (&symbol.file, symbol.binding) {
        (Some(file), Binding::Local) => format!("'{}' ({file})", symbol.name),
        _ => format!("'{}'", symbol.name),
    }
}

fn has_soname(file: &ElfFile64<Endianness>) -> bool {
    let Some(dynamic) = file.section_by_name(".dynamic") else {
        return false;
    };
    let Ok(data) = dynamic.data() else {
        return false;
    };
    data.chunks_exact(16).any(|entry| {
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&entry[..8]);
        i64::from_le_bytes(tag) == i64::from(elf::DT_SONAME)
    })
}

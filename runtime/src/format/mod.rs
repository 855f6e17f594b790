//! Reading and writing `.ulp` files.
//!
//! A `.ulp` is an ELF64 relocatable object (`ET_REL`) for the patch's architecture, so `readelf` and
//! `objdump` explain it: one `SHF_ALLOC` section per [`Section`], a symbol table with the patch's own
//! symbols (`STB_GLOBAL`, defined) and the running program's symbols it refers to (`STB_GLOBAL`,
//! `SHN_UNDEF`), `SHT_RELA` sections, and two sections of our own:
//!
//! - `.ulp.meta`: the [`Meta`] record as JSON;
//! - `.ulp.sum`: SHA-256 over the whole file with these 32 bytes zeroed (integrity).
//!
//! The reader validates everything (ELF structure, architecture, format version, integrity, the
//! content id, every index, offset and relocation type) before anyone may use the result; corrupt
//! input is an error, never a panic. See `docs/FORMAT.md`.

use object::elf;
use object::read::{Object as _, ObjectSection as _, ObjectSymbol as _};
use object::write::{self, StandardSegment};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, RelocationTarget, SectionFlags,
};
use sha2::{Digest, Sha256};

use crate::hash::hex;
use crate::meta::{Meta, FORMAT_MAJOR, FORMAT_MINOR};
use crate::patch::{Patch, RelocTarget, Relocation, Section, SectionKind, Symbol, SymbolKind};
use crate::x86_64::relocation_field_size;

/// Name of the metadata section.
pub const META_SECTION: &str = ".ulp.meta";
/// Name of the integrity-hash section.
pub const SUM_SECTION: &str = ".ulp.sum";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a live patch: not an ELF object ({0})")]
    NotElf(String),
    #[error("not a live patch: it has no {META_SECTION} section")]
    NotAPatch,
    #[error("patch is for {0}; this tool handles x86_64 only")]
    ForeignArchitecture(String),
    #[error("patch format {major}.{minor} is not supported (this tool reads {FORMAT_MAJOR}.x)")]
    UnsupportedVersion { major: u64, minor: u64 },
    #[error("patch metadata is corrupt: {0}")]
    BadMeta(String),
    #[error("patch is corrupt: integrity hash does not match its contents")]
    IntegrityMismatch,
    #[error("patch is corrupt: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> FormatError {
    FormatError::Invalid(message.into())
}

/// Serialize `patch` to `.ulp` bytes, filling in `patch.meta.id` with its content id. Relocations
/// are put in their canonical order (by section, then offset), the order the reader returns them in.
pub fn write_patch(patch: &mut Patch) -> Result<Vec<u8>, FormatError> {
    patch.relocations.sort_by_key(|r| (r.section, r.offset));
    patch.meta.id = content_id(patch);
    patch.validate()?;

    let mut object =
        write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let mut section_ids = Vec::with_capacity(patch.sections.len());
    for section in &patch.sections {
        let kind = match section.kind {
            SectionKind::Text => object::SectionKind::Text,
            SectionKind::ReadOnlyData => object::SectionKind::ReadOnlyData,
            SectionKind::Data => object::SectionKind::Data,
            SectionKind::Bss => object::SectionKind::UninitializedData,
        };
        let id = object.add_section(Vec::new(), section.name.as_bytes().to_vec(), kind);
        if section.kind == SectionKind::Bss {
            object.append_section_bss(id, section.size, section.align);
        } else {
            object.set_section_data(id, section.data.clone(), section.align);
        }
        section_ids.push(id);
    }

    let mut symbol_ids = Vec::with_capacity(patch.symbols.len());
    for symbol in &patch.symbols {
        symbol_ids.push(object.add_symbol(write::Symbol {
            name: symbol.name.as_bytes().to_vec(),
            value: symbol.offset,
            size: symbol.size,
            kind: match symbol.kind {
                SymbolKind::Function => object::SymbolKind::Text,
                SymbolKind::Object => object::SymbolKind::Data,
            },
            scope: object::SymbolScope::Linkage,
            weak: false,
            section: write::SymbolSection::Section(section_ids[symbol.section]),
            flags: object::SymbolFlags::None,
        }));
    }
    let mut external_ids = Vec::with_capacity(patch.meta.references.len());
    for index in 0..patch.meta.references.len() {
        external_ids.push(object.add_symbol(write::Symbol {
            name: external_symbol_name(&patch.meta, index).into_bytes(),
            value: 0,
            size: 0,
            kind: object::SymbolKind::Unknown,
            scope: object::SymbolScope::Linkage,
            weak: false,
            section: write::SymbolSection::Undefined,
            flags: object::SymbolFlags::None,
        }));
    }

    for reloc in &patch.relocations {
        let symbol = match reloc.target {
            RelocTarget::Symbol(i) => symbol_ids[i],
            RelocTarget::Section(i) => object.section_symbol(section_ids[i]),
            RelocTarget::External(i) => external_ids[i],
        };
        object
            .add_relocation(
                section_ids[reloc.section],
                write::Relocation {
                    offset: reloc.offset,
                    symbol,
                    addend: reloc.addend,
                    flags: RelocationFlags::Elf {
                        r_type: reloc.r_type,
                    },
                },
            )
            .map_err(|e| invalid(format!("cannot write relocation: {e}")))?;
    }

    let meta =
        serde_json::to_vec_pretty(&patch.meta).map_err(|e| FormatError::BadMeta(e.to_string()))?;
    let meta_id = object.add_section(
        object.segment_name(StandardSegment::Data).to_vec(),
        META_SECTION.as_bytes().to_vec(),
        object::SectionKind::Other,
    );
    object.set_section_data(meta_id, meta, 1);
    let sum_id = object.add_section(
        Vec::new(),
        SUM_SECTION.as_bytes().to_vec(),
        object::SectionKind::Other,
    );
    object.set_section_data(sum_id, vec![0u8; 32], 1);

    let mut bytes = object
        .write()
        .map_err(|e| invalid(format!("cannot write ELF: {e}")))?;
    let sum_range = sum_file_range(&bytes)?;
    let digest = Sha256::digest(&bytes);
    bytes[sum_range].copy_from_slice(&digest);
    Ok(bytes)
}

/// Parse and fully validate `.ulp` bytes.
pub fn read_patch(bytes: &[u8]) -> Result<Patch, FormatError> {
    let file = object::File::parse(bytes).map_err(|e| FormatError::NotElf(e.to_string()))?;
    if file.format() != BinaryFormat::Elf {
        return Err(FormatError::NotElf(format!("{:?} file", file.format())));
    }
    let meta_section = file
        .section_by_name(META_SECTION)
        .ok_or(FormatError::NotAPatch)?;
    if file.architecture() != Architecture::X86_64 || !file.is_64() || !file.is_little_endian() {
        return Err(FormatError::ForeignArchitecture(format!(
            "{:?}",
            file.architecture()
        )));
    }
    if file.kind() != object::ObjectKind::Relocatable {
        return Err(invalid(format!(
            "expected a relocatable object (ET_REL), found {:?}",
            file.kind()
        )));
    }

    let meta_bytes = meta_section
        .data()
        .map_err(|e| invalid(format!("{META_SECTION}: {e}")))?;
    let meta = parse_meta(meta_bytes)?;

    let sum_range = sum_file_range(bytes)?;
    let mut zeroed = bytes.to_vec();
    zeroed[sum_range.clone()].fill(0);
    if Sha256::digest(&zeroed).as_slice() != &bytes[sum_range] {
        return Err(FormatError::IntegrityMismatch);
    }

    let mut sections = Vec::new();
    let mut section_index = std::collections::HashMap::new();
    for section in file.sections() {
        let SectionFlags::Elf { sh_flags } = section.flags() else {
            continue;
        };
        if sh_flags & u64::from(elf::SHF_ALLOC) == 0 {
            continue;
        }
        let name = section
            .name()
            .map_err(|e| invalid(format!("section name: {e}")))?
            .to_string();
        let executable = sh_flags & u64::from(elf::SHF_EXECINSTR) != 0;
        let writable = sh_flags & u64::from(elf::SHF_WRITE) != 0;
        let kind = match (section.kind(), executable, writable) {
            (object::SectionKind::UninitializedData, _, _) => SectionKind::Bss,
            (_, true, false) => SectionKind::Text,
            (_, true, true) => {
                return Err(invalid(format!(
                    "section {name} is writable and executable"
                )))
            }
            (_, false, true) => SectionKind::Data,
            (_, false, false) => SectionKind::ReadOnlyData,
        };
        let data = if kind == SectionKind::Bss {
            Vec::new()
        } else {
            section
                .data()
                .map_err(|e| invalid(format!("section {name}: {e}")))?
                .to_vec()
        };
        section_index.insert(section.index(), sections.len());
        sections.push(Section {
            name,
            kind,
            align: section.align(),
            data,
            size: section.size(),
        });
    }

    let mut symbols = Vec::new();
    let mut symbol_targets = std::collections::HashMap::new();
    let external_names: std::collections::HashMap<String, usize> = (0..meta.references.len())
        .map(|i| (external_symbol_name(&meta, i), i))
        .collect();
    for symbol in file.symbols() {
        let name = symbol
            .name()
            .map_err(|e| invalid(format!("symbol name: {e}")))?;
        match symbol.section() {
            object::SymbolSection::Section(index) => {
                let Some(&section) = section_index.get(&index) else {
                    continue;
                };
                let kind = match symbol.kind() {
                    object::SymbolKind::Text => SymbolKind::Function,
                    object::SymbolKind::Data => SymbolKind::Object,
                    object::SymbolKind::Section => {
                        symbol_targets.insert(symbol.index(), RelocTarget::Section(section));
                        continue;
                    }
                    _ => continue,
                };
                symbol_targets.insert(symbol.index(), RelocTarget::Symbol(symbols.len()));
                symbols.push(Symbol {
                    name: name.to_string(),
                    kind,
                    section,
                    offset: symbol.address(),
                    size: symbol.size(),
                });
            }
            object::SymbolSection::Undefined if !name.is_empty() => {
                let index = *external_names.get(name).ok_or_else(|| {
                    invalid(format!(
                        "undefined symbol {name} is not listed in {META_SECTION}"
                    ))
                })?;
                symbol_targets.insert(symbol.index(), RelocTarget::External(index));
            }
            _ => {}
        }
    }

    let mut relocations = Vec::new();
    for section in file.sections() {
        let Some(&patch_section) = section_index.get(&section.index()) else {
            continue;
        };
        for (offset, reloc) in section.relocations() {
            let RelocationFlags::Elf { r_type } = reloc.flags() else {
                return Err(invalid("relocation without an ELF type"));
            };
            let RelocationTarget::Symbol(symbol) = reloc.target() else {
                return Err(invalid(format!(
                    "relocation at {}+{offset:#x} has no symbol",
                    sections[patch_section].name
                )));
            };
            let target = *symbol_targets.get(&symbol).ok_or_else(|| {
                invalid(format!(
                    "relocation at {}+{offset:#x} refers to an unusable symbol",
                    sections[patch_section].name
                ))
            })?;
            relocations.push(Relocation {
                section: patch_section,
                offset,
                r_type,
                target,
                addend: reloc.addend(),
            });
        }
    }

    let patch = Patch {
        meta,
        sections,
        symbols,
        relocations,
    };
    patch.validate()?;
    if content_id(&patch) != patch.meta.id {
        return Err(invalid("patch id does not match its contents"));
    }
    Ok(patch)
}

fn parse_meta(bytes: &[u8]) -> Result<Meta, FormatError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| FormatError::BadMeta(e.to_string()))?;
    let version = |field: &str| {
        value
            .get("format")
            .and_then(|f| f.get(field))
            .and_then(|v| v.as_u64())
    };
    let (Some(major), Some(minor)) = (version("major"), version("minor")) else {
        return Err(FormatError::BadMeta("no format version".into()));
    };
    if major != u64::from(FORMAT_MAJOR) {
        return Err(FormatError::UnsupportedVersion { major, minor });
    }
    let _ = FORMAT_MINOR;
    serde_json::from_value(value).map_err(|e| FormatError::BadMeta(e.to_string()))
}

/// File offsets of the `.ulp.sum` section's 32 bytes.
fn sum_file_range(bytes: &[u8]) -> Result<std::ops::Range<usize>, FormatError> {
    let file = object::File::parse(bytes).map_err(|e| FormatError::NotElf(e.to_string()))?;
    let section = file
        .section_by_name(SUM_SECTION)
        .ok_or_else(|| invalid(format!("no {SUM_SECTION} section")))?;
    let (offset, size) = section
        .file_range()
        .ok_or_else(|| invalid(format!("{SUM_SECTION} has no contents")))?;
    if size != 32
        || offset
            .checked_add(32)
            .is_none_or(|end| end > bytes.len() as u64)
    {
        return Err(invalid(format!(
            "{SUM_SECTION} is not 32 bytes inside the file"
        )));
    }
    Ok(offset as usize..offset as usize + 32)
}

/// The ELF name of the undefined symbol for `meta.references[index]`: its plain name, made unique
/// with `@ulp.<index>` when another reference shares the name (same-named locals of two files).
pub fn external_symbol_name(meta: &Meta, index: usize) -> String {
    let name = &meta.references[index].name;
    let shared = meta.references.iter().filter(|r| &r.name == name).count() > 1;
    if shared {
        format!("{name}@ulp.{index}")
    } else {
        name.clone()
    }
}

/// The patch id: hex of the first 8 bytes of SHA-256 over the patch's content and metadata (with the
/// id itself left empty). Same content ⇒ same id.
pub fn content_id(patch: &Patch) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    let mut meta = patch.meta.clone();
    meta.id.clear();
    field(&serde_json::to_vec(&meta).expect("Meta serializes"));
    for section in &patch.sections {
        field(section.name.as_bytes());
        field(&[section.kind as u8]);
        field(&section.align.to_le_bytes());
        field(&section.size.to_le_bytes());
        field(&section.data);
    }
    for symbol in &patch.symbols {
        field(symbol.name.as_bytes());
        field(&[symbol.kind as u8]);
        field(&(symbol.section as u64).to_le_bytes());
        field(&symbol.offset.to_le_bytes());
        field(&symbol.size.to_le_bytes());
    }
    for reloc in &patch.relocations {
        let (tag, index) = match reloc.target {
            RelocTarget::Symbol(i) => (0u8, i),
            RelocTarget::Section(i) => (1, i),
            RelocTarget::External(i) => (2, i),
        };
        field(&(reloc.section as u64).to_le_bytes());
        field(&reloc.offset.to_le_bytes());
        field(&reloc.r_type.to_le_bytes());
        field(&[tag]);
        field(&(index as u64).to_le_bytes());
        field(&reloc.addend.to_le_bytes());
    }
    let digest = hasher.finalize();
    hex(&digest[..8])
}

impl Patch {
    /// Check every index, offset, size and relocation type, so that linking cannot go out of bounds.
    pub fn validate(&self) -> Result<(), FormatError> {
        let mut names = std::collections::HashSet::new();
        for section in &self.sections {
            if !section.align.is_power_of_two() || section.align > 1 << 16 {
                return Err(invalid(format!(
                    "section {} has alignment {}",
                    section.name, section.align
                )));
            }
            let expected = if section.kind == SectionKind::Bss {
                0
            } else {
                section.size
            };
            if section.data.len() as u64 != expected || section.size > 1 << 30 {
                return Err(invalid(format!(
                    "section {} has inconsistent size",
                    section.name
                )));
            }
        }
        for symbol in &self.symbols {
            let section = self
                .sections
                .get(symbol.section)
                .ok_or_else(|| invalid(format!("symbol {} is in no section", symbol.name)))?;
            if symbol
                .offset
                .checked_add(symbol.size)
                .is_none_or(|end| end > section.size)
            {
                return Err(invalid(format!(
                    "symbol {} lies outside section {}",
                    symbol.name, section.name
                )));
            }
            if !names.insert(symbol.name.as_str()) {
                return Err(invalid(format!("symbol {} is defined twice", symbol.name)));
            }
        }
        for reloc in &self.relocations {
            let section = self
                .sections
                .get(reloc.section)
                .ok_or_else(|| invalid("relocation in a section that does not exist"))?;
            let size = relocation_field_size(reloc.r_type).ok_or_else(|| {
                invalid(format!(
                    "{} at {}+{:#x} is not supported",
                    crate::x86_64::relocation_name(reloc.r_type),
                    section.name,
                    reloc.offset
                ))
            })?;
            if section.kind == SectionKind::Bss
                || reloc
                    .offset
                    .checked_add(size as u64)
                    .is_none_or(|end| end > section.size)
            {
                return Err(invalid(format!(
                    "relocation at {}+{:#x} lies outside the section",
                    section.name, reloc.offset
                )));
            }
            let target_ok = match reloc.target {
                RelocTarget::Symbol(i) => i < self.symbols.len(),
                RelocTarget::Section(i) => i < self.sections.len(),
                RelocTarget::External(i) => i < self.meta.references.len(),
            };
            if !target_ok {
                return Err(invalid(format!(
                    "relocation at {}+{:#x} has no target",
                    section.name, reloc.offset
                )));
            }
            if crate::x86_64::is_supported_tls(reloc.r_type)
                && !matches!(reloc.target, RelocTarget::External(_))
            {
                return Err(invalid(format!(
                    "{} at {}+{:#x} refers to a thread-local variable of the patch (new thread-local variables are not supported)",
                    crate::x86_64::relocation_name(reloc.r_type),
                    section.name,
                    reloc.offset
                )));
            }
        }
        if self.meta.name.chars().any(char::is_control) {
            return Err(invalid("patch name contains control characters"));
        }
        for function in &self.meta.functions {
            match self.symbol(&function.replacement) {
                Some((_, symbol))
                    if symbol.kind == SymbolKind::Function
                        && self.sections[symbol.section].kind == SectionKind::Text => {}
                _ => {
                    return Err(invalid(format!(
                        "replacement {} for {} is not a function in a code section of the patch",
                        function.replacement, function.target.name
                    )))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;

//! The in-memory model of a patch: sections of code and data, the symbols defined in them, and the
//! relocations that tie them to each other and to the running program. The writer serializes exactly
//! this; the reader returns exactly this after validating it.

use crate::meta::Meta;

/// What a section holds, which decides its memory protection once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// Code: mapped read + execute.
    Text,
    /// Constants and string literals: mapped read-only.
    ReadOnlyData,
    /// Initialized writable data.
    Data,
    /// Zero-initialized writable data (`SHT_NOBITS`): `data` is empty, `size` counts.
    Bss,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// ELF section name, e.g. `.text.compute` or `.rodata.str1.1`.
    pub name: String,
    pub kind: SectionKind,
    /// Required alignment in bytes (a power of two, at least 1).
    pub align: u64,
    /// Contents; empty for [`SectionKind::Bss`].
    pub data: Vec<u8>,
    /// Size in memory; equals `data.len()` except for `Bss`.
    pub size: u64,
}

impl Section {
    /// A section with contents (`Text`, `ReadOnlyData` or `Data`).
    pub fn with_data(
        name: impl Into<String>,
        kind: SectionKind,
        align: u64,
        data: Vec<u8>,
    ) -> Section {
        let size = data.len() as u64;
        Section {
            name: name.into(),
            kind,
            align,
            data,
            size,
        }
    }

    /// A zero-initialized section of `size` bytes.
    pub fn bss(name: impl Into<String>, align: u64, size: u64) -> Section {
        Section {
            name: name.into(),
            kind: SectionKind::Bss,
            align,
            data: Vec::new(),
            size,
        }
    }
}

/// `STT_FUNC` or `STT_OBJECT`, as the ELF specification calls them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymbolKind {
    Function,
    Object,
}

/// A symbol defined by the patch, inside one of its sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub kind: SymbolKind,
    /// Index into [`Patch::sections`].
    pub section: usize,
    pub offset: u64,
    pub size: u64,
}

/// What a relocation refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RelocTarget {
    /// A symbol defined by the patch: index into [`Patch::symbols`].
    Symbol(usize),
    /// The start of a patch section: index into [`Patch::sections`].
    Section(usize),
    /// A symbol of the running program: index into [`Meta::references`].
    External(usize),
}

/// An ELF `Rela` entry: at `offset` in `section`, write `r_type`'s computation of `target + addend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocation {
    /// Index into [`Patch::sections`] of the section being relocated.
    pub section: usize,
    pub offset: u64,
    /// The psABI relocation type, e.g. `object::elf::R_X86_64_PLT32`.
    pub r_type: u32,
    pub target: RelocTarget,
    pub addend: i64,
}

/// A complete patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub meta: Meta,
    pub sections: Vec<Section>,
    pub symbols: Vec<Symbol>,
    pub relocations: Vec<Relocation>,
}

impl Patch {
    /// The patch symbol with this name.
    pub fn symbol(&self, name: &str) -> Option<(usize, &Symbol)> {
        self.symbols
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
    }
}

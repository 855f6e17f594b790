//! A parsed ELF64 x86_64 relocatable object, reduced to what patch building needs: sections with their
//! bytes and `Rela` entries, and symbols, both indexed as in the ELF file. It also answers the one
//! question every later step asks of a relocation: *what does it point at?* ([`ObjectModel::resolve`]).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use iced_x86::{Decoder, DecoderOptions};
use object::read::elf::{ElfFile64, SectionHeader};
use object::{
    elf, Endianness, Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget,
    SectionFlags, SymbolFlags, SymbolSection,
};
use ulp_runtime::meta::Binding;

/// `st_type` of a symbol, as the ELF specification names it (`STT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SymbolType {
    /// `STT_NOTYPE`
    #[default]
    NoType,
    /// `STT_OBJECT`
    Object,
    /// `STT_FUNC`
    Func,
    /// `STT_SECTION`
    Section,
    /// `STT_FILE`
    File,
    /// `STT_TLS`
    Tls,
    /// Any other `STT_*` value (e.g. `STT_GNU_IFUNC`).
    Other,
}

/// One `Elf64_Rela` entry of a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloc {
    /// Offset of the field from the start of the section.
    pub offset: u64,
    /// psABI relocation type (`R_X86_64_*`).
    pub r_type: u32,
    /// Symbol table index (0 for no symbol).
    pub symbol: usize,
    pub addend: i64,
}

/// One section of the object.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub index: usize,
    pub name: String,
    /// Contents; empty for `SHT_NOBITS`.
    pub data: Vec<u8>,
    pub size: u64,
    pub align: u64,
    pub sh_flags: u64,
    pub sh_entsize: u64,
    pub nobits: bool,
    /// Relocations applying to this section, sorted by offset.
    pub relocations: Vec<Reloc>,
}

impl Section {
    pub fn is_alloc(&self) -> bool {
        self.sh_flags & u64::from(elf::SHF_ALLOC) != 0
    }
    pub fn is_exec(&self) -> bool {
        self.sh_flags & u64::from(elf::SHF_EXECINSTR) != 0
    }
    pub fn is_write(&self) -> bool {
        self.sh_flags & u64::from(elf::SHF_WRITE) != 0
    }
    pub fn is_tls(&self) -> bool {
        self.sh_flags & u64::from(elf::SHF_TLS) != 0
    }
    pub fn is_merge(&self) -> bool {
        self.sh_flags & u64::from(elf::SHF_MERGE) != 0
    }
    /// A mergeable string section (`SHF_MERGE | SHF_STRINGS`, e.g. `.rodata.str1.1`).
    pub fn is_merge_strings(&self) -> bool {
        self.is_merge() && self.sh_flags & u64::from(elf::SHF_STRINGS) != 0
    }
    /// Bytes `[start, start + len)` (zeros for `SHT_NOBITS`), clamped to the section.
    pub fn bytes(&self, start: u64, len: u64) -> Vec<u8> {
        if self.nobits {
            return vec![0; len as usize];
        }
        let start = (start as usize).min(self.data.len());
        let end = (start + len as usize).min(self.data.len());
        self.data[start..end].to_vec()
    }
    /// Relocations whose field lies in `[start, end)`.
    pub fn relocations_in(&self, start: u64, end: u64) -> impl Iterator<Item = &Reloc> {
        self.relocations
            .iter()
            .filter(move |r| r.offset >= start && r.offset < end)
    }
}

/// One symbol of the object.
#[derive(Debug, Clone, Default)]
pub struct Symbol {
    pub index: usize,
    pub name: String,
    pub st_type: SymbolType,
    pub binding: Option<Binding>,
    /// Defining section; `None` for undefined, absolute and common symbols.
    pub section: Option<usize>,
    /// `SHN_COMMON` symbol (tentative definition under `-fcommon`).
    pub common: bool,
    pub undefined: bool,
    pub value: u64,
    pub size: u64,
}

impl Symbol {
    /// A symbol that names a program entity (function, variable), as opposed to section symbols,
    /// file symbols and assembler-local labels (`.LC0`, `.L3`).
    pub fn is_named(&self) -> bool {
        !self.name.is_empty()
            && !self.name.starts_with(".L")
            && matches!(
                self.st_type,
                SymbolType::NoType
                    | SymbolType::Object
                    | SymbolType::Func
                    | SymbolType::Tls
                    | SymbolType::Other
            )
    }
    pub fn is_function(&self) -> bool {
        self.st_type == SymbolType::Func && self.section.is_some()
    }
    pub fn is_data(&self) -> bool {
        matches!(self.st_type, SymbolType::Object | SymbolType::Tls)
            && (self.section.is_some() || self.common)
    }
}

/// What a relocation points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A named symbol (defined or undefined); the addend is relative to it.
    Symbol(usize),
    /// A place inside a section that no named symbol covers (string literals, jump tables,
    /// floating-point constants); the addend is relative to the section start.
    Section(usize),
    /// No symbol at all (`r_sym == 0`).
    Absolute,
}

/// A relocation's target, its addend relative to that target, and the offset the code really means
/// (for PC-relative fields in code: addend + distance from the field to the end of the instruction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub target: Target,
    /// Addend to emit against `target`.
    pub addend: i64,
    /// Offset from `target` of the byte the instruction actually refers to.
    pub place: i64,
}

/// A parsed relocatable object.
#[derive(Debug, Clone, Default)]
pub struct ObjectModel {
    /// Base name of the source file, recorded for `STB_LOCAL` references.
    pub source_name: String,
    /// Text of the source file the object was compiled from, when the caller has it: comparison uses
    /// it to recognise changes that only shift `__LINE__` immediates (see `lines`).
    pub source_text: Option<String>,
    /// Indexed by ELF section index (index 0 is the null section).
    pub sections: Vec<Section>,
    /// Indexed by ELF symbol index (index 0 is the null symbol).
    pub symbols: Vec<Symbol>,
    by_name: HashMap<String, usize>,
    /// Named symbols per section, sorted by value.
    by_section: HashMap<usize, Vec<usize>>,
    /// Per section, the sorted places that relocations refer to without a named symbol: they divide
    /// anonymous sections (`.rodata` literals at -O0, jump tables) into items.
    anonymous_places: HashMap<usize, Vec<i64>>,
}

/// Relocation types whose field holds `S + A - P`.
pub fn is_pc_relative(r_type: u32) -> bool {
    matches!(
        r_type,
        elf::R_X86_64_PC32
            | elf::R_X86_64_PLT32
            | elf::R_X86_64_PC64
            | elf::R_X86_64_GOTPCREL
            | elf::R_X86_64_GOTPCRELX
            | elf::R_X86_64_REX_GOTPCRELX
            | elf::R_X86_64_GOTTPOFF
            | elf::R_X86_64_TLSGD
            | elf::R_X86_64_TLSLD
    )
}

/// Thread-local-storage relocation types.
pub fn is_tls_relocation(r_type: u32) -> bool {
    matches!(
        r_type,
        elf::R_X86_64_TPOFF32
            | elf::R_X86_64_TPOFF64
            | elf::R_X86_64_GOTTPOFF
            | elf::R_X86_64_TLSGD
            | elf::R_X86_64_TLSLD
            | elf::R_X86_64_DTPOFF32
            | elf::R_X86_64_DTPOFF64
            | elf::R_X86_64_DTPMOD64
            | elf::R_X86_64_GOTPC32_TLSDESC
            | elf::R_X86_64_TLSDESC_CALL
    )
}

/// Whether `bytes` is an object of link-time-optimization intermediate code rather than machine code:
/// GCC's `-flto` objects carry GIMPLE in sections named `.gnu.lto_*` (and, unless fat, an empty
/// `.text`); clang's are LLVM bitcode files (raw or wrapped).
pub fn is_lto(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"BC\xC0\xDE") || bytes.starts_with(&[0xDE, 0xC0, 0x17, 0x0B]) {
        return true;
    }
    ElfFile64::<Endianness>::parse(bytes).is_ok_and(|file| {
        file.sections()
            .any(|s| s.name().is_ok_and(|n| n.starts_with(".gnu.lto_")))
    })
}

impl ObjectModel {
    /// Parse an ELF64 x86_64 relocatable object. `source_name` is the base name of its source file.
    pub fn parse(bytes: &[u8], source_name: &str) -> Result<ObjectModel> {
        let file = ElfFile64::<Endianness>::parse(bytes).context("not an ELF64 object")?;
        if file.architecture() != object::Architecture::X86_64 {
            bail!("not an x86_64 object");
        }
        if file.kind() != object::ObjectKind::Relocatable {
            bail!("not a relocatable object");
        }
        let endian = file.endian();
        let mut model = ObjectModel {
            source_name: source_name.to_string(),
            ..ObjectModel::default()
        };
        for section in file.sections() {
            let index = section.index().0;
            let sh_flags = match section.flags() {
                SectionFlags::Elf { sh_flags } => sh_flags,
                _ => 0,
            };
            let header = section.elf_section_header();
            let nobits = header.sh_type(endian) == elf::SHT_NOBITS;
            let data = if nobits {
                Vec::new()
            } else {
                section
                    .data()
                    .with_context(|| format!("reading section {index}"))?
                    .to_vec()
            };
            let mut relocations = Vec::new();
            for (offset, reloc) in section.relocations() {
                let r_type = match reloc.flags() {
                    RelocationFlags::Elf { r_type } => r_type,
                    _ => bail!("unexpected relocation encoding"),
                };
                let symbol = match reloc.target() {
                    RelocationTarget::Symbol(s) => s.0,
                    _ => 0,
                };
                relocations.push(Reloc {
                    offset,
                    r_type,
                    symbol,
                    addend: reloc.addend(),
                });
            }
            relocations.sort_by_key(|r| r.offset);
            if model.sections.len() <= index {
                model.sections.resize_with(index + 1, Section::default);
            }
            model.sections[index] = Section {
                index,
                name: section.name().unwrap_or_default().to_string(),
                data,
                size: section.size(),
                align: section.align().max(1),
                sh_flags,
                sh_entsize: header.sh_entsize(endian),
                nobits,
                relocations,
            };
        }
        for symbol in file.symbols() {
            let index = symbol.index().0;
            let (st_info, _) = match symbol.flags() {
                SymbolFlags::Elf { st_info, st_other } => (st_info, st_other),
                _ => (0, 0),
            };
            let st_type = match st_info & 0xf {
                elf::STT_NOTYPE => SymbolType::NoType,
                elf::STT_OBJECT => SymbolType::Object,
                elf::STT_FUNC => SymbolType::Func,
                elf::STT_SECTION => SymbolType::Section,
                elf::STT_FILE => SymbolType::File,
                elf::STT_TLS => SymbolType::Tls,
                _ => SymbolType::Other,
            };
            let binding = match st_info >> 4 {
                elf::STB_LOCAL => Some(Binding::Local),
                elf::STB_GLOBAL | elf::STB_GNU_UNIQUE => Some(Binding::Global),
                elf::STB_WEAK => Some(Binding::Weak),
                _ => None,
            };
            let (section, common, undefined) = match symbol.section() {
                SymbolSection::Section(s) => (Some(s.0), false, false),
                SymbolSection::Common => (None, true, false),
                SymbolSection::Undefined => (None, false, true),
                _ => (None, false, false),
            };
            let name = if st_type == SymbolType::Section {
                section
                    .and_then(|s| model.sections.get(s))
                    .map(|s| s.name.clone())
                    .unwrap_or_default()
            } else {
                symbol.name().unwrap_or_default().to_string()
            };
            if model.symbols.len() <= index {
                model.symbols.resize_with(index + 1, Symbol::default);
            }
            model.symbols[index] = Symbol {
                index,
                name,
                st_type,
                binding,
                section,
                common,
                undefined,
                value: symbol.address(),
                size: symbol.size(),
            };
        }
        for symbol in &model.symbols {
            if !symbol.is_named() {
                continue;
            }
            if symbol.section.is_some() || symbol.common || symbol.undefined {
                model
                    .by_name
                    .entry(symbol.name.clone())
                    .or_insert(symbol.index);
            }
            if let Some(section) = symbol.section {
                model
                    .by_section
                    .entry(section)
                    .or_default()
                    .push(symbol.index);
            }
        }
        for list in model.by_section.values_mut() {
            list.sort_by_key(|&i| (model.symbols[i].value, i));
        }
        let mut places: HashMap<usize, Vec<i64>> = HashMap::new();
        for index in 0..model.sections.len() {
            let biases = model.pc_biases(index);
            for (reloc, bias) in model.sections[index].relocations.iter().zip(biases) {
                if let Target::Section(s) = model.resolve(reloc, bias).target {
                    places
                        .entry(s)
                        .or_default()
                        .push(model.resolve(reloc, bias).place);
                }
            }
        }
        for list in places.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
        model.anonymous_places = places;
        Ok(model)
    }

    /// This object with the text of its source file attached (see [`ObjectModel::source_text`]).
    pub fn with_source(mut self, text: impl Into<String>) -> ObjectModel {
        self.source_text = Some(text.into());
        self
    }

    /// The item of anonymous section `section` that starts at `place`: bytes up to the next place
    /// some relocation of this object refers to, or the end of the section, without trailing zeros.
    pub fn anonymous_item(&self, section: usize, place: i64) -> Vec<u8> {
        let next = self
            .anonymous_places
            .get(&section)
            .and_then(|l| l.iter().find(|&&p| p > place).copied())
            .unwrap_or(self.sections[section].size as i64);
        let start = place.max(0) as u64;
        let mut bytes = self.sections[section].bytes(start, (next.max(place) - place) as u64);
        // Alignment padding before the next item is not part of this one (a literal that only moved
        // may be followed by more or fewer padding zeros).
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        bytes
    }

    /// The named symbol with this exact name (defined, common or undefined).
    pub fn symbol_by_name(&self, name: &str) -> Option<&Symbol> {
        self.by_name.get(name).map(|&i| &self.symbols[i])
    }

    /// Named symbols defined in `section`, by value.
    pub fn symbols_in(&self, section: usize) -> &[usize] {
        self.by_section
            .get(&section)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Bytes of a defined symbol.
    pub fn symbol_bytes(&self, symbol: &Symbol) -> Vec<u8> {
        match symbol.section {
            Some(s) => self.sections[s].bytes(symbol.value, symbol.size),
            None => vec![0; symbol.size as usize],
        }
    }

    /// Whether `symbol` is defined in an executable section.
    pub fn symbol_is_code(&self, symbol: &Symbol) -> bool {
        symbol.section.is_some_and(|s| self.sections[s].is_exec())
    }

    /// Relocations inside a defined symbol, with offsets relative to the symbol.
    pub fn symbol_relocations(&self, symbol: &Symbol) -> Vec<Reloc> {
        let Some(s) = symbol.section else {
            return Vec::new();
        };
        self.sections[s]
            .relocations_in(symbol.value, symbol.value + symbol.size.max(1))
            .map(|r| Reloc {
                offset: r.offset - symbol.value,
                ..*r
            })
            .collect()
    }

    /// For each relocation of `section`, the distance from its field to the end of the instruction
    /// holding it (decoded with iced-x86), for PC-relative relocations in code; 0 otherwise.
    pub fn pc_biases(&self, section: usize) -> Vec<i64> {
        let section = &self.sections[section];
        let needs =
            section.is_exec() && section.relocations.iter().any(|r| is_pc_relative(r.r_type));
        if !needs {
            return vec![0; section.relocations.len()];
        }
        let mut ends = Vec::new();
        let mut decoder = Decoder::with_ip(64, &section.data, 0, DecoderOptions::NONE);
        while decoder.can_decode() {
            let instruction = decoder.decode();
            ends.push((instruction.ip(), instruction.next_ip()));
        }
        section
            .relocations
            .iter()
            .map(|r| {
                if !is_pc_relative(r.r_type) {
                    return 0;
                }
                let at = ends.partition_point(|&(start, _)| start <= r.offset);
                match at.checked_sub(1).map(|i| ends[i]) {
                    Some((_, end)) if end > r.offset => (end - r.offset) as i64,
                    // Not inside a decodable instruction: the field is the last thing in it.
                    _ => x86_width(r.r_type),
                }
            })
            .collect()
    }

    /// What relocation `reloc` (with `bias` from [`ObjectModel::pc_biases`]) points at.
    pub fn resolve(&self, reloc: &Reloc, bias: i64) -> Resolved {
        let Some(symbol) = self.symbols.get(reloc.symbol).filter(|_| reloc.symbol != 0) else {
            return Resolved {
                target: Target::Absolute,
                addend: reloc.addend,
                place: reloc.addend + bias,
            };
        };
        if symbol.is_named() {
            return Resolved {
                target: Target::Symbol(symbol.index),
                addend: reloc.addend,
                place: reloc.addend + bias,
            };
        }
        let Some(section) = symbol.section else {
            return Resolved {
                target: Target::Absolute,
                addend: reloc.addend,
                place: reloc.addend + bias,
            };
        };
        // Section symbol or assembler-local label: find the named symbol at that place.
        let addend = symbol.value as i64 + reloc.addend;
        let place = addend + bias;
        if !self.sections[section].is_merge() {
            if let Some(named) = self.covering_symbol(section, place) {
                let value = self.symbols[named].value as i64;
                return Resolved {
                    target: Target::Symbol(named),
                    addend: addend - value,
                    place: place - value,
                };
            }
        }
        Resolved {
            target: Target::Section(section),
            addend,
            place,
        }
    }

    /// The named symbol of `section` that contains `offset`: one whose range covers it, else one
    /// starting there, else one ending there (a pointer one past the end of an array).
    fn covering_symbol(&self, section: usize, offset: i64) -> Option<usize> {
        let list = self.symbols_in(section);
        let covers = |&&i: &&usize| {
            let s = &self.symbols[i];
            let start = s.value as i64;
            offset >= start && offset < start + s.size as i64
        };
        list.iter()
            .find(covers)
            .or_else(|| {
                list.iter()
                    .find(|&&i| self.symbols[i].value as i64 == offset)
            })
            .or_else(|| {
                list.iter().find(|&&i| {
                    let s = &self.symbols[i];
                    s.size > 0 && (s.value + s.size) as i64 == offset
                })
            })
            .copied()
    }
}

fn x86_width(r_type: u32) -> i64 {
    ulp_runtime::x86_64::relocation_field_size(r_type).unwrap_or(4) as i64
}

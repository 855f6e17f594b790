//! Source information from the DWARF of a relocatable object (`-g`): which source line a place in a
//! code section came from (the line table), where a function or variable was declared
//! (`DW_AT_decl_file`/`DW_AT_decl_line`), and which functions were inlined where
//! (`DW_TAG_inlined_subroutine`).
//!
//! In a relocatable object the DWARF refers to code and data through relocations (`.rela.debug_info`,
//! `.rela.debug_line`, `.rela.debug_addr`, …), and the section fields themselves hold zeros. Before
//! handing the bytes to gimli, the relocations of every `.debug_*` section are applied here: a
//! reference to another debug section becomes the plain offset in that section (what DWARF expects),
//! and a reference into an allocated section `i` becomes the *synthetic address* `i << 32 | offset`,
//! so that every address read from the DWARF says which section and which offset it means, even though
//! all code sections of a relocatable object start at address 0.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::elf;

use crate::object_model::{ObjectModel, Symbol};

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// A source file and line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file as the compiler named it (relative to the compilation directory when it lies there).
    pub file: String,
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A function inlined into a concrete function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inlined {
    /// The inlined function (`DW_AT_abstract_origin`'s name).
    pub callee: String,
    /// 1 for a function inlined directly into the concrete function, 2 for one inlined into that, ….
    pub depth: usize,
    /// Code ranges `[start, end)` of the inlined copy, as offsets in the function's section.
    pub ranges: Vec<(u64, u64)>,
    /// Where the callee is declared.
    pub decl: Option<Location>,
}

/// A concrete function (`DW_TAG_subprogram` with code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub section: usize,
    pub offset: u64,
    pub decl: Option<Location>,
    /// Functions inlined into it, outermost first in DWARF order.
    pub inlined: Vec<Inlined>,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    offset: u64,
    end_sequence: bool,
    is_stmt: bool,
    file: usize,
    line: u64,
}

/// The source information of one object. Empty when the object has no (readable) DWARF.
#[derive(Debug, Clone, Default)]
pub struct DebugInfo {
    files: Vec<String>,
    /// Where each file of `files` is on disk (compilation directory joined).
    paths: HashMap<String, PathBuf>,
    /// Source files read so far (by display name), as lines; `None` when unreadable.
    sources: RefCell<HashMap<String, Option<Vec<String>>>>,
    /// Line table rows per section, sorted by offset (an end-of-sequence row before a row starting at
    /// the same offset).
    rows: HashMap<usize, Vec<Row>>,
    /// Concrete functions by (section, offset of their entry).
    functions: BTreeMap<(usize, u64), Function>,
    /// Variables with a static address, by (section, offset).
    variables: BTreeMap<(usize, u64), Location>,
    /// Declarations of variables by name (first seen), for those without a static address.
    variable_names: HashMap<String, Location>,
}

const SECTION_SHIFT: u32 = 32;

fn split_address(address: u64) -> (usize, u64) {
    (
        (address >> SECTION_SHIFT) as usize,
        address & ((1 << SECTION_SHIFT) - 1),
    )
}

/// The value a relocation of a debug section stores: see the module documentation.
fn relocated_value(object: &ObjectModel, symbol: usize, addend: i64) -> u64 {
    let Some(symbol) = object.symbols.get(symbol).filter(|_| symbol != 0) else {
        return addend as u64;
    };
    let base = match symbol.section.and_then(|s| object.sections.get(s)) {
        Some(section) if section.is_alloc() && !section.is_tls() => {
            (section.index as u64) << SECTION_SHIFT
        }
        _ => 0,
    };
    base.wrapping_add(symbol.value).wrapping_add(addend as u64)
}

/// The `.debug_*` sections of `object` with their relocations applied, by name.
fn relocated_debug_sections(object: &ObjectModel) -> HashMap<String, Vec<u8>> {
    let mut sections = HashMap::new();
    for section in &object.sections {
        if !section.name.starts_with(".debug_") || section.is_alloc() {
            continue;
        }
        let mut data = section.data.clone();
        for reloc in &section.relocations {
            let value = relocated_value(object, reloc.symbol, reloc.addend);
            let width = match reloc.r_type {
                elf::R_X86_64_64 | elf::R_X86_64_DTPOFF64 => 8,
                elf::R_X86_64_32 | elf::R_X86_64_32S | elf::R_X86_64_DTPOFF32 => 4,
                _ => continue,
            };
            let start = reloc.offset as usize;
            if let Some(field) = data.get_mut(start..start + width) {
                field.copy_from_slice(&value.to_le_bytes()[..width]);
            }
        }
        sections.insert(section.name.clone(), data);
    }
    sections
}

/// Per-unit helpers for reading names and files.
struct UnitReader<'a, 'b> {
    dwarf: &'b gimli::Dwarf<Reader<'a>>,
    unit: &'b gimli::Unit<Reader<'a>>,
    comp_dir: Option<String>,
}

impl<'a> UnitReader<'a, '_> {
    fn string(&self, value: AttributeValue<Reader<'a>>) -> Option<String> {
        self.dwarf
            .attr_string(self.unit, value)
            .ok()
            .map(|s| s.to_string_lossy().into_owned())
    }

    /// The path on disk of file `index` of the unit's line program header.
    fn file_path(&self, index: u64) -> Option<PathBuf> {
        let header = self.unit.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let name = self.string(file.path_name())?;
        let directory = file
            .directory(header)
            .and_then(|d| self.string(d))
            .unwrap_or_default();
        let mut path = PathBuf::from(self.comp_dir.clone().unwrap_or_default());
        path.push(directory);
        path.push(name);
        Some(path)
    }

    /// The display name of file `index` of the unit's line program header.
    fn file_name(&self, index: u64) -> Option<String> {
        let header = self.unit.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let name = self.string(file.path_name())?;
        if name.starts_with('/') {
            return Some(name);
        }
        let directory = file
            .directory(header)
            .and_then(|d| self.string(d))
            .unwrap_or_default();
        if file.directory_index() == 0
            || directory.is_empty()
            || Some(&directory) == self.comp_dir.as_ref()
        {
            Some(name)
        } else {
            Some(format!("{}/{name}", directory.trim_end_matches('/')))
        }
    }

    fn decl(&self, entry: &gimli::DebuggingInformationEntry<Reader<'a>>) -> Option<Location> {
        let file = match entry.attr_value(gimli::DW_AT_decl_file)? {
            AttributeValue::FileIndex(i) => i,
            AttributeValue::Udata(i) => i,
            AttributeValue::Data1(i) => u64::from(i),
            AttributeValue::Data2(i) => u64::from(i),
            _ => return None,
        };
        let line = entry.attr_value(gimli::DW_AT_decl_line)?.udata_value()?;
        Some(Location {
            file: self.file_name(file)?,
            line,
        })
    }

    /// The entry a reference attribute (`DW_AT_abstract_origin`, `DW_AT_specification`) points to.
    fn referenced(
        &self,
        entry: &gimli::DebuggingInformationEntry<Reader<'a>>,
        attribute: gimli::DwAt,
    ) -> Option<gimli::DebuggingInformationEntry<Reader<'a>>> {
        match entry.attr_value(attribute)? {
            AttributeValue::UnitRef(offset) => self.unit.entry(offset).ok(),
            _ => None,
        }
    }

    /// Name and declaration of an entry, following abstract origins and specifications.
    fn name_and_decl(
        &self,
        entry: &gimli::DebuggingInformationEntry<Reader<'a>>,
    ) -> (Option<String>, Option<Location>) {
        let mut name = entry
            .attr_value(gimli::DW_AT_name)
            .and_then(|v| self.string(v));
        let mut decl = self.decl(entry);
        let mut current = entry.clone();
        for _ in 0..4 {
            if name.is_some() && decl.is_some() {
                break;
            }
            let Some(next) = self
                .referenced(&current, gimli::DW_AT_abstract_origin)
                .or_else(|| self.referenced(&current, gimli::DW_AT_specification))
            else {
                break;
            };
            if name.is_none() {
                name = next
                    .attr_value(gimli::DW_AT_name)
                    .and_then(|v| self.string(v));
            }
            if decl.is_none() {
                decl = self.decl(&next);
            }
            current = next;
        }
        (name, decl)
    }

    fn low_pc(&self, entry: &gimli::DebuggingInformationEntry<Reader<'a>>) -> Option<u64> {
        let value = entry.attr_value(gimli::DW_AT_low_pc)?;
        self.dwarf.attr_address(self.unit, value).ok().flatten()
    }

    fn ranges(&self, entry: &gimli::DebuggingInformationEntry<Reader<'a>>) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        if let Ok(mut iter) = self.dwarf.die_ranges(self.unit, entry) {
            while let Ok(Some(range)) = iter.next() {
                ranges.push((range.begin, range.end));
            }
        }
        ranges
    }

    /// The static address of a variable (`DW_OP_addr` or `DW_OP_addrx` as its whole location).
    fn variable_address(
        &self,
        entry: &gimli::DebuggingInformationEntry<Reader<'a>>,
    ) -> Option<u64> {
        let AttributeValue::Exprloc(expression) = entry.attr_value(gimli::DW_AT_location)? else {
            return None;
        };
        let mut bytes = expression.0;
        match gimli::Operation::parse(&mut bytes, self.unit.encoding()).ok()? {
            gimli::Operation::Address { address } => Some(address),
            gimli::Operation::AddressIndex { index } => self.dwarf.address(self.unit, index).ok(),
            _ => None,
        }
    }
}

impl DebugInfo {
    /// Read the DWARF of `object`. Anything unreadable is left out: source information only ever
    /// improves messages.
    pub fn load(object: &ObjectModel) -> DebugInfo {
        let sections = relocated_debug_sections(object);
        let mut info = DebugInfo::default();
        if !sections.contains_key(".debug_info") {
            return info;
        }
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader<'_>, gimli::Error> {
            let data = sections.get(id.name()).map(Vec::as_slice).unwrap_or(&[]);
            Ok(EndianSlice::new(data, LittleEndian))
        });
        let Ok(dwarf) = dwarf else {
            return info;
        };
        let mut file_ids: HashMap<String, usize> = HashMap::new();
        let mut units = dwarf.units();
        while let Ok(Some(header)) = units.next() {
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            let comp_dir = unit.comp_dir.map(|d| d.to_string_lossy().into_owned());
            let reader = UnitReader {
                dwarf: &dwarf,
                unit: &unit,
                comp_dir,
            };
            info.read_lines(&reader, &mut file_ids);
            info.read_entries(&reader);
        }
        for rows in info.rows.values_mut() {
            // Stable: rows at the same address keep their order (views).
            rows.sort_by_key(|r| (r.offset, !r.end_sequence));
        }
        info
    }

    fn read_lines(&mut self, reader: &UnitReader<'_, '_>, file_ids: &mut HashMap<String, usize>) {
        let Some(program) = reader.unit.line_program.clone() else {
            return;
        };
        let mut names: HashMap<u64, usize> = HashMap::new();
        let mut rows = program.rows();
        while let Ok(Some((_, row))) = rows.next_row() {
            let index = row.file_index();
            let file = *names.entry(index).or_insert_with(|| {
                let name = reader.file_name(index).unwrap_or_else(|| "?".to_string());
                if let Some(path) = reader.file_path(index) {
                    self.paths.entry(name.clone()).or_insert(path);
                }
                *file_ids.entry(name.clone()).or_insert_with(|| {
                    self.files.push(name);
                    self.files.len() - 1
                })
            });
            let (section, offset) = split_address(row.address());
            self.rows.entry(section).or_default().push(Row {
                offset,
                end_sequence: row.end_sequence(),
                is_stmt: row.is_stmt(),
                file,
                line: row.line().map_or(0, |l| l.get()),
            });
        }
    }

    fn read_entries(&mut self, reader: &UnitReader<'_, '_>) {
        let mut cursor = reader.unit.entries();
        // The concrete function being walked: its key and depth.
        let mut current: Option<((usize, u64), isize)> = None;
        // Depths of the inlined subroutines enclosing the entry being walked.
        let mut inline_stack: Vec<isize> = Vec::new();
        while let Ok(Some(entry)) = cursor.next_dfs() {
            let depth = entry.depth();
            if current.is_some_and(|(_, d)| depth <= d) {
                current = None;
            }
            while inline_stack.last().is_some_and(|&d| depth <= d) {
                inline_stack.pop();
            }
            match entry.tag() {
                gimli::DW_TAG_subprogram => {
                    let Some(low_pc) = reader.low_pc(entry) else {
                        continue;
                    };
                    let (name, decl) = reader.name_and_decl(entry);
                    let key = split_address(low_pc);
                    self.functions.insert(
                        key,
                        Function {
                            name: name.unwrap_or_default(),
                            section: key.0,
                            offset: key.1,
                            decl,
                            inlined: Vec::new(),
                        },
                    );
                    current = Some((key, depth));
                    inline_stack.clear();
                }
                gimli::DW_TAG_inlined_subroutine => {
                    let Some((key, _)) = current else { continue };
                    let (name, decl) = reader.name_and_decl(entry);
                    let ranges = reader
                        .ranges(entry)
                        .into_iter()
                        .filter(|&(start, _)| split_address(start).0 == key.0)
                        .map(|(start, end)| (split_address(start).1, split_address(end).1))
                        .collect();
                    inline_stack.push(depth);
                    if let Some(function) = self.functions.get_mut(&key) {
                        function.inlined.push(Inlined {
                            callee: name.unwrap_or_default(),
                            depth: inline_stack.len(),
                            ranges,
                            decl,
                        });
                    }
                }
                gimli::DW_TAG_variable => {
                    let (name, decl) = reader.name_and_decl(entry);
                    let Some(decl) = decl else { continue };
                    if let Some(address) = reader.variable_address(entry) {
                        self.variables
                            .entry(split_address(address))
                            .or_insert(decl.clone());
                    }
                    if let Some(name) = name {
                        self.variable_names.entry(name).or_insert(decl);
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether any source information was found.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.functions.is_empty()
    }

    /// The source line the code at `offset` of `section` came from: the nearest earlier address with
    /// a line, within the same sequence; of several rows at that address (views), the last statement.
    pub fn line_at(&self, section: usize, offset: u64) -> Option<Location> {
        let rows = self.rows.get(&section)?;
        let at = rows.partition_point(|r| r.offset <= offset);
        let mut best: Option<&Row> = None;
        for row in rows[..at].iter().rev() {
            if row.end_sequence {
                break;
            }
            if best.is_some_and(|b| b.offset != row.offset) {
                break;
            }
            if row.line != 0
                && (best.is_none() || (row.is_stmt && !best.is_some_and(|b| b.is_stmt)))
            {
                best = Some(row);
            }
        }
        best.map(|row| Location {
            file: self.files[row.file].clone(),
            line: row.line,
        })
    }

    /// Where source file `file` (a name from a [`Location`]) is on disk, as the compiler saw it.
    pub fn source_path(&self, file: &str) -> Option<&Path> {
        self.paths.get(file).map(PathBuf::as_path)
    }

    /// The text of a source line, read from disk once per file (`None` if it cannot be read).
    pub fn source_line(&self, location: &Location) -> Option<String> {
        let mut sources = self.sources.borrow_mut();
        let lines = sources
            .entry(location.file.clone())
            .or_insert_with(|| {
                let bytes = std::fs::read(self.source_path(&location.file)?).ok()?;
                Some(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .map(str::to_string)
                        .collect(),
                )
            })
            .as_ref()?;
        let index = usize::try_from(location.line).ok()?.checked_sub(1)?;
        Some(lines.get(index).cloned().unwrap_or_default())
    }

    /// The concrete function whose code starts at `offset` of `section`.
    pub fn function_at(&self, section: usize, offset: u64) -> Option<&Function> {
        self.functions.get(&(section, offset))
    }

    /// The function `symbol` of `object` (a function symbol of the object this was loaded from).
    pub fn function(&self, symbol: &Symbol) -> Option<&Function> {
        self.function_at(symbol.section?, symbol.value)
    }

    /// Where a function or variable of the object is declared.
    pub fn declaration(&self, symbol: &Symbol) -> Option<Location> {
        if symbol.is_function() {
            return self.function(symbol)?.decl.clone();
        }
        if let Some(section) = symbol.section {
            if let Some(location) = self.variables.get(&(section, symbol.value)) {
                return Some(location.clone());
            }
        }
        self.variable_names.get(&symbol.name).cloned()
    }

    /// The source line of byte `offset` of function `symbol`, else its declaration.
    pub fn line_in(&self, symbol: &Symbol, offset: u64) -> Option<Location> {
        symbol
            .section
            .and_then(|s| self.line_at(s, symbol.value + offset))
            .or_else(|| self.declaration(symbol))
    }

    /// The chain of inlined functions (outermost first) whose code covers byte `offset` of function
    /// `symbol`.
    pub fn inlined_at(&self, symbol: &Symbol, offset: u64) -> Vec<&Inlined> {
        let Some(function) = self.function(symbol) else {
            return Vec::new();
        };
        let at = symbol.value + offset;
        let mut chain: Vec<&Inlined> = function
            .inlined
            .iter()
            .filter(|i| i.ranges.iter().any(|&(s, e)| s <= at && at < e))
            .collect();
        chain.sort_by_key(|i| i.depth);
        chain
    }
}

//! Symbol resolution in the target: the main executable's `.symtab`/`.dynsym` and each loaded shared
//! library's `.dynsym`, with their load biases, resolved the way the dynamic linker and a person see
//! them: `STB_LOCAL` symbols by name and source file, globals in load order (executable first).

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Sym};
use object::{Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, RelocationTarget};

use ulp_runtime::meta::{Binding, TargetSymbol};

use crate::error::{failed, refused, Result};
use crate::maps::{self, Mapping};
use crate::memory::Memory;

/// A symbol read from an ELF symbol table.
#[derive(Debug, Clone)]
pub struct ElfSymbol {
    pub name: String,
    pub value: u64,
    pub size: u64,
    /// `STB_*`.
    pub bind: u8,
    /// `STT_*`.
    pub kind: u8,
    pub defined: bool,
    /// Base name of the preceding `STT_FILE` symbol (`.symtab` only).
    pub file: Option<String>,
    /// The `.gnu.version` entry has the hidden bit (a non-default version).
    pub hidden_version: bool,
}

/// What the applier needs from one ELF file.
#[derive(Debug, Clone)]
pub struct ElfImage {
    pub e_type: u16,
    pub symtab: Vec<ElfSymbol>,
    pub dynsym: Vec<ElfSymbol>,
    /// `p_vaddr` of the first `PT_LOAD`, page-aligned down.
    pub first_load: u64,
    /// `p_vaddr` of `PT_DYNAMIC`.
    pub dynamic: Option<u64>,
    /// (`r_offset`, symbol name) of each `GLOB_DAT`/`JUMP_SLOT` dynamic relocation: the GOT slots.
    pub got_slots: Vec<(u64, String)>,
    /// GNU build-id as lowercase hex.
    pub build_id: Option<String>,
    /// `DT_SONAME`, for shared libraries that have one.
    pub soname: Option<String>,
}

impl ElfImage {
    /// Parse `data`; `what` names the file in errors.
    pub fn parse(data: &[u8], what: &str) -> Result<ElfImage> {
        let file = ElfFile64::<object::Endianness>::parse(data)
            .map_err(|e| failed!("{what}: not a 64-bit ELF file: {e}"))?;
        let endian = file.endian();
        let header = file.elf_header();
        let mut first_load = None;
        let mut dynamic = None;
        for ph in file.elf_program_headers() {
            match ph.p_type(endian) {
                elf::PT_LOAD if first_load.is_none() => {
                    first_load = Some(ph.p_vaddr(endian) & !0xfff)
                }
                elf::PT_DYNAMIC => dynamic = Some(ph.p_vaddr(endian)),
                _ => {}
            }
        }
        let versym: Vec<u16> = file
            .section_by_name(".gnu.version")
            .and_then(|s| s.data().ok())
            .map(|d| {
                d.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect()
            })
            .unwrap_or_default();
        let read_table = |symbols: &mut dyn Iterator<
            Item = object::read::elf::ElfSymbol64<'_, '_, object::Endianness>,
        >,
                          with_versions: bool| {
            let mut file_name: Option<String> = None;
            let mut out = Vec::new();
            for symbol in symbols {
                let raw = symbol.elf_symbol();
                let name = symbol.name().unwrap_or("").to_string();
                if raw.st_type() == elf::STT_FILE {
                    file_name = Some(name.rsplit('/').next().unwrap_or("").to_string());
                    continue;
                }
                let hidden_version = with_versions
                    && versym
                        .get(symbol.index().0)
                        .is_some_and(|v| v & 0x8000 != 0);
                out.push(ElfSymbol {
                    name,
                    value: raw.st_value(endian),
                    size: raw.st_size(endian),
                    bind: raw.st_bind(),
                    kind: raw.st_type(),
                    defined: raw.st_shndx(endian) != elf::SHN_UNDEF,
                    file: file_name.clone(),
                    hidden_version,
                });
            }
            out
        };
        let symtab = read_table(&mut file.symbols(), false);
        let dynsym = read_table(&mut file.dynamic_symbols(), true);
        let mut got_slots = Vec::new();
        // Dynamic relocations name `.dynsym` entries, not `.symtab` ones.
        let dynamic_table = file.dynamic_symbol_table();
        if let (Some(relocations), Some(table)) = (file.dynamic_relocations(), dynamic_table) {
            for (offset, reloc) in relocations {
                let is_slot = matches!(
                    reloc.flags(),
                    object::RelocationFlags::Elf { r_type }
                        if r_type == elf::R_X86_64_GLOB_DAT || r_type == elf::R_X86_64_JUMP_SLOT
                );
                if let (true, RelocationTarget::Symbol(index)) = (is_slot, reloc.target()) {
                    if let Ok(symbol) = table.symbol_by_index(index) {
                        got_slots.push((offset, symbol.name().unwrap_or("").to_string()));
                    }
                }
            }
        }
        let build_id = file.build_id().ok().flatten().map(ulp_runtime::hash::hex);
        let soname = crate::target_object::soname(&file);
        Ok(ElfImage {
            build_id,
            soname,
            e_type: header.e_type(endian),
            symtab,
            dynsym,
            first_load: first_load.unwrap_or(0),
            dynamic,
            got_slots,
        })
    }
}

/// An ELF object loaded in the target.
#[derive(Debug, Clone)]
pub struct LoadedObject {
    /// The path as `/proc/PID/maps` shows it.
    pub path: String,
    /// Run-time address minus link-time address.
    pub bias: u64,
    pub image: ElfImage,
    /// Lowest and highest address of its mappings.
    pub start: u64,
    pub end: u64,
}

impl LoadedObject {
    fn describe(&self) -> &str {
        &self.path
    }
}

/// The target process as the applier resolves symbols in it.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: i32,
    pub exe: LoadedObject,
    /// Shared libraries in the dynamic linker's load order.
    pub libraries: Vec<LoadedObject>,
    /// The object being patched: `None` for the executable, else an index into `libraries`
    /// (chosen by [`crate::target_object::select`]).
    pub patched: Option<usize>,
}

fn strip_deleted(path: &str) -> &str {
    path.strip_suffix(" (deleted)").unwrap_or(path)
}

fn extent(maps: &[Mapping], path: &str) -> (u64, u64) {
    let mine = maps
        .iter()
        .filter(|m| m.path.as_deref().map(strip_deleted) == Some(path));
    let start = mine.clone().map(|m| m.start).min().unwrap_or(0);
    let end = mine.map(|m| m.end).max().unwrap_or(0);
    (start, end)
}

/// The file behind the offset-0 mapping `m`, read through `/proc/PID/map_files` (or its path).
fn read_mapped_file(pid: i32, m: &Mapping) -> Result<Vec<u8>> {
    let via = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    std::fs::read(&via).or_else(|_| {
        let path = strip_deleted(m.path.as_deref().unwrap_or(""));
        std::fs::read(path).map_err(|e| failed!("cannot read {path}: {e}"))
    })
}

impl Target {
    /// Find the main executable and the loaded libraries of `pid`.
    pub fn inspect(pid: i32, maps: &[Mapping], memory: &Memory) -> Result<Target> {
        let link = format!("/proc/{pid}/exe");
        let exe_path = std::fs::read_link(&link)
            .map_err(|e| failed!("cannot read {link}: {e}"))?
            .to_string_lossy()
            .into_owned();
        let exe_path = strip_deleted(&exe_path).to_string();
        let data = std::fs::read(&link).map_err(|e| failed!("cannot read {exe_path}: {e}"))?;
        let image = ElfImage::parse(&data, &exe_path)?;
        let bias = if image.e_type == elf::ET_DYN {
            let first = maps
                .iter()
                .find(|m| m.offset == 0 && m.path.as_deref().map(strip_deleted) == Some(&exe_path))
                .ok_or_else(|| failed!("{exe_path} is not mapped in process {pid}"))?;
            first.start - image.first_load
        } else {
            0
        };
        let (start, end) = extent(maps, &exe_path);
        let exe = LoadedObject {
            path: exe_path,
            bias,
            image,
            start,
            end,
        };
        let libraries = match link_map_order(&exe, maps, memory) {
            Some(order) if !order.is_empty() => order,
            _ => address_order(&exe, maps),
        }
        .into_iter()
        .filter_map(|(m, bias)| {
            let path = strip_deleted(m.path.as_deref()?).to_string();
            let data = read_mapped_file(pid, m).ok()?;
            let image = ElfImage::parse(&data, &path).ok()?;
            let (start, end) = extent(maps, &path);
            Some(LoadedObject {
                path,
                bias: bias.unwrap_or(m.start - image.first_load),
                image,
                start,
                end,
            })
        })
        .collect();
        Ok(Target {
            pid,
            exe,
            libraries,
            patched: None,
        })
    }

    /// The object the patch applies to: the executable or one shared library.
    pub fn patched_object(&self) -> &LoadedObject {
        match self.patched {
            Some(i) => &self.libraries[i],
            None => &self.exe,
        }
    }

    /// Mutable access to the object the patch applies to.
    pub fn patched_object_mut(&mut self) -> &mut LoadedObject {
        match self.patched {
            Some(i) => &mut self.libraries[i],
            None => &mut self.exe,
        }
    }

    /// Resolve a symbol of the object being patched (the executable or a library): address and size.
    pub fn resolve_in_executable(&self, symbol: &TargetSymbol) -> Result<(u64, u64)> {
        let object = self.patched_object();
        let found = match symbol.binding {
            Binding::Local => resolve_local(object, symbol)?,
            Binding::Global | Binding::Weak => find_global(object, &symbol.name, true)
                .or_else(|| find_hidden(object, &symbol.name))
                .ok_or_else(|| {
                    failed!(
                        "symbol '{}' not found in {}",
                        symbol.name,
                        object.describe()
                    )
                })?,
        };
        Ok((object.bias + found.value, found.size))
    }

    /// Resolve a symbol the patch refers to: locals in the patched object, globals in load order
    /// (executable first; the executable's and the patched object's `.symtab` too), and last a
    /// hidden-visibility global of the patched object (`STB_LOCAL` once linked).
    pub fn resolve_reference(&self, symbol: &TargetSymbol, memory: &Memory) -> Result<u64> {
        if symbol.binding == Binding::Local {
            return self.resolve_in_executable(symbol).map(|(a, _)| a);
        }
        let objects = std::iter::once(&self.exe).chain(&self.libraries);
        for (i, object) in objects.enumerate() {
            let own = i == 0 || self.patched == Some(i - 1);
            let Some(found) = find_global(object, &symbol.name, own) else {
                continue;
            };
            if found.kind == elf::STT_GNU_IFUNC {
                return self.ifunc_address(&symbol.name, memory);
            }
            if found.kind == elf::STT_TLS {
                return Err(refused!(
                    "symbol '{}' is thread-local: it has no address (only local-exec and initial-exec references reach it)",
                    symbol.name
                ));
            }
            return Ok(object.bias + found.value);
        }
        let object = self.patched_object();
        if let Some(found) = find_hidden(object, &symbol.name) {
            return Ok(object.bias + found.value);
        }
        Err(failed!(
            "symbol '{}' not found in process {} (executable {} or its {} libraries)",
            symbol.name,
            self.pid,
            self.exe.path,
            self.libraries.len()
        ))
    }

    /// An `STT_GNU_IFUNC` resolves to what the program itself uses: its GOT slot for the symbol.
    fn ifunc_address(&self, name: &str, memory: &Memory) -> Result<u64> {
        let objects = std::iter::once(&self.exe).chain(&self.libraries);
        for object in objects {
            if let Some((offset, _)) = object.image.got_slots.iter().find(|(_, n)| n == name) {
                return memory.read_u64(object.bias + offset);
            }
        }
        Err(failed!(
            "symbol '{name}' is an IFUNC the program does not import through a GOT slot; cannot resolve it"
        ))
    }

    /// The code range of the executable (for `rel32` reach).
    pub fn exe_range(&self) -> (u64, u64) {
        (self.exe.start, self.exe.end)
    }

    /// The range of the patched object's mappings (for `rel32` reach of its entry jumps).
    pub fn object_range(&self) -> (u64, u64) {
        let object = self.patched_object();
        (object.start, object.end)
    }
}

pub(crate) fn resolve_local<'a>(
    object: &'a LoadedObject,
    symbol: &TargetSymbol,
) -> Result<&'a ElfSymbol> {
    let candidates: Vec<&ElfSymbol> = object
        .image
        .symtab
        .iter()
        .filter(|s| s.bind == elf::STB_LOCAL && s.defined && s.name == symbol.name)
        .filter(|s| s.kind != elf::STT_SECTION)
        .collect();
    let where_ = symbol
        .file
        .as_deref()
        .map(|f| format!(" of {f}"))
        .unwrap_or_default();
    match candidates.len() {
        0 => Err(failed!(
            "static symbol '{}'{where_} not found in {}",
            symbol.name,
            object.describe()
        )),
        1 => Ok(candidates[0]),
        _ => {
            let Some(file) = symbol.file.as_deref() else {
                return Err(failed!(
                    "static symbol '{}' is ambiguous in {}: {} definitions and the patch names no source file",
                    symbol.name,
                    object.describe(),
                    candidates.len()
                ));
            };
            let in_file: Vec<&ElfSymbol> = candidates
                .into_iter()
                .filter(|s| s.file.as_deref() == Some(file))
                .collect();
            in_file
                .get(symbol.position as usize)
                .copied()
                .ok_or_else(|| {
                    if in_file.is_empty() {
                        failed!(
                            "static symbol '{}'{where_} not found in {}",
                            symbol.name,
                            object.describe()
                        )
                    } else {
                        failed!(
                            "static symbol '{}'{where_} is ambiguous in {}: no definition at position {}",
                            symbol.name,
                            object.describe(),
                            symbol.position
                        )
                    }
                })
        }
    }
}

/// A defined global/weak symbol of `object`: `.symtab` then `.dynsym` for the executable, `.dynsym`
/// (default version preferred) for libraries.
pub(crate) fn find_global<'a>(
    object: &'a LoadedObject,
    name: &str,
    use_symtab: bool,
) -> Option<&'a ElfSymbol> {
    let is_global = |s: &&ElfSymbol| {
        s.defined
            && s.name == name
            && matches!(
                s.bind,
                elf::STB_GLOBAL | elf::STB_WEAK | elf::STB_GNU_UNIQUE
            )
    };
    if use_symtab {
        if let Some(found) = object.image.symtab.iter().find(is_global) {
            return Some(found);
        }
    }
    let matching: Vec<&ElfSymbol> = object.image.dynsym.iter().filter(is_global).collect();
    matching
        .iter()
        .find(|s| !s.hidden_version)
        .or_else(|| matching.first())
        .copied()
}

/// A hidden-visibility global: the static linker made it `STB_LOCAL`; accepted when unique by name.
fn find_hidden<'a>(object: &'a LoadedObject, name: &str) -> Option<&'a ElfSymbol> {
    let mut matching = object.image.symtab.iter().filter(|s| {
        s.defined && s.name == name && s.bind == elf::STB_LOCAL && s.kind != elf::STT_SECTION
    });
    let first = matching.next()?;
    matching.next().is_none().then_some(first)
}

/// Libraries in the dynamic linker's order, from the `r_debug` link map the executable's `DT_DEBUG`
/// points to: each library's offset-0 mapping and its `l_addr` bias.
fn link_map_order<'m>(
    exe: &LoadedObject,
    maps: &'m [Mapping],
    memory: &Memory,
) -> Option<Vec<(&'m Mapping, Option<u64>)>> {
    let dynamic = exe.bias + exe.image.dynamic?;
    let mut r_debug = 0;
    for i in 0..512u64 {
        let tag = memory.read_u64(dynamic + i * 16).ok()?;
        if tag == elf::DT_NULL as u64 {
            break;
        }
        if tag == elf::DT_DEBUG as u64 {
            r_debug = memory.read_u64(dynamic + i * 16 + 8).ok()?;
        }
    }
    if r_debug == 0 {
        return None;
    }
    let mut entry = memory.read_u64(r_debug + 8).ok()?;
    let mut out = Vec::new();
    for _ in 0..4096 {
        if entry == 0 {
            break;
        }
        let l_addr = memory.read_u64(entry).ok()?;
        let l_name = memory.read_u64(entry + 8).ok()?;
        let name = if l_name != 0 {
            memory.read_c_string(l_name, 4096).ok()?
        } else {
            String::new()
        };
        if !name.is_empty() {
            let canonical = std::fs::canonicalize(&name)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| name.clone());
            let mapping = maps.iter().find(|m| {
                m.offset == 0
                    && m.path.as_deref().is_some_and(|p| {
                        let p = strip_deleted(p);
                        !p.starts_with('[') && (p == name || p == canonical)
                    })
                    && m.start >= l_addr
            });
            if let Some(m) = mapping {
                out.push((m, Some(l_addr)));
            }
        }
        entry = memory.read_u64(entry + 24).ok()?;
    }
    Some(out)
}

/// Without a link map (static executable): every other file mapped at offset 0, by address.
fn address_order<'m>(exe: &LoadedObject, maps: &'m [Mapping]) -> Vec<(&'m Mapping, Option<u64>)> {
    maps.iter()
        .filter(|m| {
            m.offset == 0
                && m.path
                    .as_deref()
                    .is_some_and(|p| !p.starts_with('[') && strip_deleted(p) != exe.path)
        })
        .map(|m| (m, None))
        .collect()
}

/// The mapping containing `address`, for messages.
pub fn describe_address(maps: &[Mapping], address: u64) -> String {
    match maps::find(maps, address).and_then(|m| m.path.clone()) {
        Some(path) => format!("{address:#x} ({path})"),
        None => format!("{address:#x}"),
    }
}

//! The content of the `.ulp.meta` section: what a patch is, what it replaces and what it needs from the
//! running program. Serialized as JSON so that `readelf -p .ulp.meta` is readable by a person.

use serde::{Deserialize, Serialize};

/// Major version of the patch format this build reads and writes. A reader refuses any other major.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor version: additions a reader of the same major may ignore.
pub const FORMAT_MINOR: u16 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatVersion {
    pub major: u16,
    pub minor: u16,
}

impl FormatVersion {
    pub const CURRENT: FormatVersion = FormatVersion {
        major: FORMAT_MAJOR,
        minor: FORMAT_MINOR,
    };
}

/// Instruction-set architecture of the code a patch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
}

/// ELF symbol binding, named as the ELF specification names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Binding {
    #[serde(rename = "STB_LOCAL")]
    Local,
    #[serde(rename = "STB_GLOBAL")]
    Global,
    #[serde(rename = "STB_WEAK")]
    Weak,
}

/// The object in the target process a patch is made for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetObject {
    /// File name (or soname) of the object; `None` means the main executable of the process.
    pub object: Option<String>,
    /// GNU build-id of that object as lowercase hex, when the patch was bound to a binary.
    pub build_id: Option<String>,
}

/// A symbol of the running program identified the way a person and the target's symbol table do:
/// by name, binding and, for `STB_LOCAL` symbols, the source file that defines it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TargetSymbol {
    pub name: String,
    pub binding: Binding,
    /// Base name of the source file (the `STT_FILE` symbol) for `STB_LOCAL` symbols.
    pub file: Option<String>,
    /// Position among same-named local symbols of that file, in symbol-table order (usually 0).
    pub position: u32,
}

/// A byte range inside a function, relative to its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u32,
    pub len: u32,
}

/// One function of the running program that the patch redirects to new code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedFunction {
    /// The original function in the target.
    pub target: TargetSymbol,
    /// Size of the original function (`st_size`); the running one must have the same size.
    pub original_size: u64,
    /// SHA-256 (hex) of the original function's bytes with `masked` ranges zeroed.
    pub original_hash: String,
    /// Ranges whose bytes the linker fills in or may rewrite (relocation fields, relaxed opcodes).
    pub masked: Vec<ByteRange>,
    /// Name of the patch symbol (`STT_FUNC`, defined in the patch) holding the new code.
    pub replacement: String,
    /// Why the function is in the patch, for a person.
    pub reason: String,
}

/// The whole `.ulp.meta` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub format: FormatVersion,
    /// Version of the tool that wrote the patch.
    pub tool: String,
    pub arch: Arch,
    /// Patch id: hex of the first 8 bytes of the content hash (filled in by the writer).
    pub id: String,
    pub name: String,
    pub description: String,
    pub cves: Vec<String>,
    pub target: TargetObject,
    pub functions: Vec<ReplacedFunction>,
    /// Names of data objects the patch adds (they start with their initial values).
    pub new_data: Vec<String>,
    /// Symbols of the running program the patch refers to, in the order of `RelocTarget::External`.
    pub references: Vec<TargetSymbol>,
    /// Ids of patches that must already be applied.
    pub depends: Vec<String>,
}

impl Meta {
    /// A meta record for `name` with no content yet; the writer fills in `id`.
    pub fn new(name: impl Into<String>) -> Meta {
        Meta {
            format: FormatVersion::CURRENT,
            tool: concat!("ulpatch-rs ", env!("CARGO_PKG_VERSION")).to_string(),
            arch: Arch::X86_64,
            id: String::new(),
            name: name.into(),
            description: String::new(),
            cves: Vec::new(),
            target: TargetObject::default(),
            functions: Vec::new(),
            new_data: Vec::new(),
            references: Vec::new(),
            depends: Vec::new(),
        }
    }
}

//! Round-trip and corruption tests of the `.ulp` reader and writer.

use super::*;
use crate::meta::{Binding, ByteRange, ReplacedFunction, TargetSymbol};

/// A patch replacing `compute` with code that calls `helper` (new, in the patch), reads `counter`
/// (a static local of the running program) and calls `printf` (libc), with a string literal.
pub(crate) fn sample_patch() -> Patch {
    let mut meta = Meta::new("sample");
    meta.references = vec![
        TargetSymbol {
            name: "counter.0".into(),
            binding: Binding::Local,
            file: Some("prog.c".into()),
            position: 0,
        },
        TargetSymbol {
            name: "printf".into(),
            binding: Binding::Global,
            file: None,
            position: 0,
        },
    ];
    meta.functions = vec![ReplacedFunction {
        target: TargetSymbol {
            name: "compute".into(),
            binding: Binding::Global,
            file: None,
            position: 0,
        },
        original_size: 32,
        original_hash: "00".repeat(32),
        masked: vec![ByteRange { offset: 1, len: 4 }],
        replacement: "compute".into(),
        reason: "bytes differ at +0x3".into(),
    }];
    meta.new_data = vec!["table".into()];
    let text = [0x90; 48];
    Patch {
        meta,
        sections: vec![
            Section::with_data(".text.compute", SectionKind::Text, 16, text[..32].to_vec()),
            Section::with_data(".text.helper", SectionKind::Text, 16, text[..16].to_vec()),
            Section::with_data(
                ".rodata.str1.1",
                SectionKind::ReadOnlyData,
                1,
                b"hello %d\n\0".to_vec(),
            ),
            Section::with_data(
                ".data.table",
                SectionKind::Data,
                8,
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ),
            Section::bss(".bss.scratch", 8, 64),
        ],
        symbols: vec![
            Symbol {
                name: "compute".into(),
                kind: SymbolKind::Function,
                section: 0,
                offset: 0,
                size: 32,
            },
            Symbol {
                name: "helper".into(),
                kind: SymbolKind::Function,
                section: 1,
                offset: 0,
                size: 16,
            },
            Symbol {
                name: "table".into(),
                kind: SymbolKind::Object,
                section: 3,
                offset: 0,
                size: 8,
            },
            Symbol {
                name: "scratch".into(),
                kind: SymbolKind::Object,
                section: 4,
                offset: 0,
                size: 64,
            },
        ],
        relocations: vec![
            Relocation {
                section: 0,
                offset: 1,
                r_type: elf::R_X86_64_PLT32,
                target: RelocTarget::Symbol(1),
                addend: -4,
            },
            Relocation {
                section: 0,
                offset: 7,
                r_type: elf::R_X86_64_PC32,
                target: RelocTarget::External(0),
                addend: -4,
            },
            Relocation {
                section: 0,
                offset: 13,
                r_type: elf::R_X86_64_PC32,
                target: RelocTarget::Section(2),
                addend: -4,
            },
            Relocation {
                section: 0,
                offset: 19,
                r_type: elf::R_X86_64_PLT32,
                target: RelocTarget::External(1),
                addend: -4,
            },
            Relocation {
                section: 3,
                offset: 0,
                r_type: elf::R_X86_64_64,
                target: RelocTarget::Symbol(3),
                addend: 8,
            },
        ],
    }
}

fn written(patch: &mut Patch) -> Vec<u8> {
    write_patch(patch).expect("sample patch writes")
}

#[test]
fn written_patch_reads_back_identically() {
    let mut patch = sample_patch();
    let bytes = written(&mut patch);
    assert_eq!(patch.meta.id.len(), 16);
    assert_eq!(read_patch(&bytes).unwrap(), patch);
}

#[test]
fn same_patch_gives_the_same_bytes_and_id() {
    let (mut a, mut b) = (sample_patch(), sample_patch());
    assert_eq!(written(&mut a), written(&mut b));
    b.sections[0].data[5] = 0xcc;
    let _ = written(&mut b);
    assert_ne!(a.meta.id, b.meta.id);
}

#[test]
fn same_named_references_get_distinct_symbols() {
    let mut patch = sample_patch();
    let mut other = patch.meta.references[0].clone();
    other.file = Some("other.c".into());
    patch.meta.references.push(other);
    patch.relocations.push(Relocation {
        section: 1,
        offset: 2,
        r_type: elf::R_X86_64_PC32,
        target: RelocTarget::External(2),
        addend: -4,
    });
    let bytes = written(&mut patch);
    assert_eq!(external_symbol_name(&patch.meta, 2), "counter.0@ulp.2");
    assert_eq!(read_patch(&bytes).unwrap(), patch);
}

#[test]
fn truncated_patch_is_an_error() {
    let bytes = written(&mut sample_patch());
    for len in [0, 10, 64, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            read_patch(&bytes[..len]).is_err(),
            "truncated to {len} bytes was accepted"
        );
    }
}

#[test]
fn every_flipped_byte_is_detected_or_harmless() {
    let bytes = written(&mut sample_patch());
    let original = read_patch(&bytes).unwrap();
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        // Must never panic; a damaged file either fails or (padding bytes) reads as the same patch.
        if let Ok(patch) = read_patch(&damaged) {
            assert_eq!(
                patch, original,
                "byte {at} changed the patch without being detected"
            );
        }
    }
}

#[test]
fn foreign_architecture_is_named() {
    let mut bytes = written(&mut sample_patch());
    bytes[18..20].copy_from_slice(&(elf::EM_AARCH64).to_le_bytes());
    assert!(matches!(
        read_patch(&bytes),
        Err(FormatError::ForeignArchitecture(_))
    ));
}

#[test]
fn unknown_major_version_is_refused() {
    let mut patch = sample_patch();
    patch.meta.format.major = FORMAT_MAJOR + 1;
    let bytes = written(&mut patch);
    assert_eq!(
        read_patch(&bytes),
        Err(FormatError::UnsupportedVersion {
            major: u64::from(FORMAT_MAJOR) + 1,
            minor: 0
        })
    );
}

#[test]
fn plain_object_without_metadata_is_not_a_patch() {
    let mut object =
        write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = object.section_id(write::StandardSection::Text);
    object.append_section_data(text, &[0xc3], 1);
    let bytes = object.write().unwrap();
    assert_eq!(read_patch(&bytes), Err(FormatError::NotAPatch));
    assert!(matches!(
        read_patch(b"#!/bin/sh\necho hi\n"),
        Err(FormatError::NotElf(_))
    ));
}

#[test]
fn relocation_outside_its_section_is_refused_by_the_writer() {
    let mut patch = sample_patch();
    patch.relocations[0].offset = 30;
    assert!(matches!(
        write_patch(&mut patch),
        Err(FormatError::Invalid(_))
    ));
}

#[test]
fn unsupported_relocation_type_is_refused() {
    let mut patch = sample_patch();
    patch.relocations[0].r_type = elf::R_X86_64_TPOFF32;
    let error = write_patch(&mut patch).unwrap_err().to_string();
    assert!(error.contains("R_X86_64_TPOFF32"), "{error}");
}

#[test]
fn readelf_explains_a_written_patch() {
    let dir = std::env::temp_dir().join(format!("ulp-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.ulp");
    std::fs::write(&path, written(&mut sample_patch())).unwrap();
    let output = std::process::Command::new("readelf")
        .args(["-S", "-r", "-s", "-W"])
        .arg(&path)
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    let output = output.expect("readelf (binutils) is installed");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        ".ulp.meta",
        ".ulp.sum",
        ".text.compute",
        "R_X86_64_PLT32",
        "printf",
        "counter.0",
    ] {
        assert!(
            text.contains(expected),
            "readelf output lacks {expected}:\n{text}"
        );
    }
}

#[test]
fn replacement_outside_code_is_refused() {
    let mut patch = sample_patch();
    patch.symbols[0].section = 3;
    patch.symbols[0].size = 8;
    let error = write_patch(&mut patch).unwrap_err().to_string();
    assert!(error.contains("code section"), "{error}");
}

#[test]
fn patch_name_with_control_characters_is_refused() {
    let mut patch = sample_patch();
    patch.meta.name = "fix\x1b[2J".into();
    assert!(write_patch(&mut patch).is_err());
}

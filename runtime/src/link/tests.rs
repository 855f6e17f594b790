//! Tests of the layout and relocation engine: every formula, stubs for far calls, overflow checks.

use super::*;
use crate::format::tests::sample_patch;

fn read_i32(image: &LinkedImage, address: u64) -> i32 {
    let segment = image
        .segments
        .iter()
        .find(|s| (s.address..s.address + s.bytes.len() as u64).contains(&address))
        .expect("address inside the image");
    let at = (address - segment.address) as usize;
    i32::from_le_bytes(segment.bytes[at..at + 4].try_into().unwrap())
}

fn read_u64(image: &LinkedImage, address: u64) -> u64 {
    let segment = image
        .segments
        .iter()
        .find(|s| (s.address..s.address + s.bytes.len() as u64).contains(&address))
        .unwrap();
    let at = (address - segment.address) as usize;
    u64::from_le_bytes(segment.bytes[at..at + 8].try_into().unwrap())
}

const BASE: u64 = 0x5555_0000_0000;

#[test]
fn parts_are_page_aligned_and_never_writable_and_executable() {
    let patch = sample_patch();
    let plan = plan(&patch, 100);
    assert_eq!(plan.header_size, PAGE_SIZE);
    let protections: Vec<_> = plan.parts.iter().map(|p| p.2).collect();
    assert_eq!(
        protections,
        [
            Protection::ReadExecute,
            Protection::ReadOnly,
            Protection::ReadWrite
        ]
    );
    for (offset, size, _) in &plan.parts {
        assert_eq!(offset % PAGE_SIZE, 0);
        assert_eq!(size % PAGE_SIZE, 0);
    }
    assert_eq!(plan.size, plan.parts.last().map(|p| p.0 + p.1).unwrap());
}

#[test]
fn near_symbols_are_reached_directly() {
    let patch = sample_patch();
    let plan = plan(&patch, 100);
    let counter = BASE - 0x1000_0000;
    let printf = BASE + 0x4000_0000;
    let image = link(&patch, &plan, BASE, &[counter, printf]).unwrap();
    let text = BASE + plan.section_offsets[0];
    // call helper: S + A - P with S = helper, P = text + 1.
    assert_eq!(
        read_i32(&image, text + 1) as i64,
        image.symbol_addresses[1] as i64 - 4 - (text + 1) as i64
    );
    // counter (a static local of the program): PC-relative to its live address.
    assert_eq!(
        read_i32(&image, text + 7) as i64,
        counter as i64 - 4 - (text + 7) as i64
    );
    // string literal through the section symbol.
    let strings = BASE + plan.section_offsets[2];
    assert_eq!(
        read_i32(&image, text + 13) as i64,
        strings as i64 - 4 - (text + 13) as i64
    );
    // printf within reach: called directly, not through the stub.
    assert_eq!(
        read_i32(&image, text + 19) as i64,
        printf as i64 - 4 - (text + 19) as i64
    );
    // absolute 64-bit pointer in data.
    let data = BASE + plan.section_offsets[3];
    assert_eq!(read_u64(&image, data), image.symbol_addresses[3] + 8);
}

#[test]
fn far_calls_go_through_a_stub_and_its_slot() {
    let patch = sample_patch();
    let plan = plan(&patch, 100);
    let printf = 0x7fff_f000_0000;
    let image = link(&patch, &plan, BASE, &[BASE, printf]).unwrap();
    let text = BASE + plan.section_offsets[0];
    let stub = BASE + plan.stubs[&1];
    let slot = BASE + plan.got_slots[&RelocTarget::External(1)];
    assert_eq!(
        read_i32(&image, text + 19) as i64,
        stub as i64 - 4 - (text + 19) as i64
    );
    assert_eq!(
        read_i32(&image, stub + 2) as i64,
        slot as i64 - (stub + 6) as i64
    );
    assert_eq!(read_u64(&image, slot), printf);
}

#[test]
fn far_data_reference_is_an_overflow_error_naming_the_symbol() {
    let patch = sample_patch();
    let plan = plan(&patch, 100);
    let error = link(&patch, &plan, BASE, &[0x7fff_f000_0000, BASE]).unwrap_err();
    assert!(
        matches!(&error, LinkError::Overflow { target, .. } if target == "counter.0"),
        "{error}"
    );
}

#[test]
fn absolute_32_bit_references_need_low_addresses() {
    let mut patch = sample_patch();
    assert!(!needs_low_addresses(&patch));
    patch.relocations[2].r_type = object::elf::R_X86_64_32;
    patch.relocations[2].addend = 0;
    assert!(needs_low_addresses(&patch));
    let plan = plan(&patch, 100);
    assert!(matches!(
        link(&patch, &plan, BASE, &[BASE, BASE]),
        Err(LinkError::Overflow { .. })
    ));
    let low = 0x4000_0000;
    let image = link(&patch, &plan, low, &[low, low]).unwrap();
    let text = low + plan.section_offsets[0];
    assert_eq!(
        read_i32(&image, text + 13) as u64,
        low + plan.section_offsets[2]
    );
}

#[test]
fn got_relocations_point_at_a_slot_holding_the_address() {
    let mut patch = sample_patch();
    patch.relocations[1].r_type = object::elf::R_X86_64_REX_GOTPCRELX;
    let plan = plan(&patch, 100);
    let counter = 0x7fff_f000_0000;
    let image = link(&patch, &plan, BASE, &[counter, BASE]).unwrap();
    let text = BASE + plan.section_offsets[0];
    let slot = BASE + plan.got_slots[&RelocTarget::External(0)];
    assert_eq!(
        read_i32(&image, text + 7) as i64,
        slot as i64 - 4 - (text + 7) as i64
    );
    assert_eq!(read_u64(&image, slot), counter);
}

#[test]
fn wrong_number_of_addresses_is_an_error() {
    let patch = sample_patch();
    let plan = plan(&patch, 100);
    assert!(matches!(
        link(&patch, &plan, BASE, &[BASE]),
        Err(LinkError::AddressCount { .. })
    ));
}

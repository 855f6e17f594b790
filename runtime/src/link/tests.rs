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

#[test]
fn local_exec_tls_field_is_the_thread_pointer_offset_plus_addend() {
    let mut patch = sample_patch();
    // `mov %fs:counter@tpoff+4, %eax`: the field is the variable's offset from %fs plus A.
    patch.relocations[1].r_type = object::elf::R_X86_64_TPOFF32;
    patch.relocations[1].addend = 4;
    let plan = plan(&patch, 100);
    assert!(plan.tp_got_slots.is_empty());
    let external = [
        Resolved::ThreadPointerOffset(-0x10),
        Resolved::Address(BASE),
    ];
    let image = link_resolved(&patch, &plan, BASE, &external).unwrap();
    let text = BASE + plan.section_offsets[0];
    assert_eq!(read_i32(&image, text + 7), -0x10 + 4);
}

#[test]
fn initial_exec_tls_loads_a_slot_holding_the_thread_pointer_offset() {
    let mut patch = sample_patch();
    patch.relocations[1].r_type = object::elf::R_X86_64_GOTTPOFF;
    let plan = plan(&patch, 100);
    let external = [
        Resolved::ThreadPointerOffset(-0x2038),
        Resolved::Address(BASE),
    ];
    let image = link_resolved(&patch, &plan, BASE, &external).unwrap();
    let text = BASE + plan.section_offsets[0];
    let slot = BASE + plan.tp_got_slots[&0];
    assert!(!plan.got_slots.contains_key(&RelocTarget::External(0)));
    // G + A - P, A = -4 as for any RIP-relative load.
    assert_eq!(
        read_i32(&image, text + 7) as i64,
        slot as i64 - 4 - (text + 7) as i64
    );
    assert_eq!(read_u64(&image, slot) as i64, -0x2038);
    // The slot lies in the read-only part, like every GOT slot.
    let part = plan
        .parts
        .iter()
        .find(|p| (BASE + p.0..BASE + p.0 + p.1).contains(&slot))
        .unwrap();
    assert_eq!(part.2, Protection::ReadOnly);
}

#[test]
fn tls_and_address_references_are_not_mixed_up() {
    let mut patch = sample_patch();
    let plan_plain = plan(&patch, 100);
    // A thread-local variable used as if it had an address.
    let error = link_resolved(
        &patch,
        &plan_plain,
        BASE,
        &[Resolved::ThreadPointerOffset(-8), Resolved::Address(BASE)],
    )
    .unwrap_err();
    assert!(
        matches!(&error, LinkError::ThreadLocal { target, .. } if target == "counter.0"),
        "{error}"
    );
    // A TLS relocation against an ordinary symbol.
    patch.relocations[1].r_type = object::elf::R_X86_64_TPOFF32;
    let plan_tls = plan(&patch, 100);
    let error = link(&patch, &plan_tls, BASE, &[BASE, BASE]).unwrap_err();
    assert!(matches!(error, LinkError::ThreadLocal { .. }), "{error}");
}

#[test]
fn tls_relocation_against_a_patch_symbol_is_refused() {
    let mut patch = sample_patch();
    patch.relocations[1].r_type = object::elf::R_X86_64_TPOFF32;
    patch.relocations[1].target = RelocTarget::Symbol(3);
    let plan = plan(&patch, 100);
    let error = link(&patch, &plan, BASE, &[BASE, BASE]).unwrap_err();
    assert!(
        error.to_string().contains("new thread-local variables"),
        "{error}"
    );
    assert!(patch.validate().is_err());
}

#[test]
fn tls_offset_out_of_32_bits_is_an_overflow() {
    let mut patch = sample_patch();
    patch.relocations[1].r_type = object::elf::R_X86_64_TPOFF32;
    let plan = plan(&patch, 100);
    let external = [
        Resolved::ThreadPointerOffset(-(1 << 40)),
        Resolved::Address(BASE),
    ];
    assert!(matches!(
        link_resolved(&patch, &plan, BASE, &external),
        Err(LinkError::Overflow { .. })
    ));
}

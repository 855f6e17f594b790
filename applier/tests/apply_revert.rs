//! The applier's mechanics against real processes, with patches built by hand.

mod common;

use std::time::Duration;

use common::{compile, replace_function, return_constant, Target};
use ulp_apply::{apply, revert, ApplyOptions};

#[test]
fn patched_function_answers_new_value_then_old_after_revert() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    assert_eq!(target.ask("41"), "42");

    let patch = replace_function(&exe, "answer", return_constant(7));
    let report = apply(target.pid(), &patch, &ApplyOptions::default()).unwrap();
    assert!(report.stop_us.is_some());
    assert_eq!(target.ask("41"), "7");
    assert_eq!(target.ask("1"), "7");

    let reverted = revert(target.pid(), None, Duration::from_secs(5)).unwrap();
    assert_eq!(reverted.id, patch.meta.id);
    assert_eq!(target.ask("41"), "42");
    assert!(target.alive());
}

#[test]
fn patched_code_calls_a_libc_function_through_a_far_stub() {
    use object::elf::R_X86_64_PLT32;
    use ulp_runtime::meta::{Binding, TargetSymbol};
    use ulp_runtime::patch::{RelocTarget, Relocation};

    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    // mov $-5, %edi; jmp abs
    let code = vec![0xbf, 0xfb, 0xff, 0xff, 0xff, 0xe9, 0, 0, 0, 0];
    let mut patch = replace_function(&exe, "answer", code);
    patch.meta.references.push(TargetSymbol {
        name: "abs".into(),
        binding: Binding::Global,
        file: None,
        position: 0,
    });
    patch.relocations.push(Relocation {
        section: 0,
        offset: 6,
        r_type: R_X86_64_PLT32,
        target: RelocTarget::External(0),
        addend: -4,
    });
    let report = apply(target.pid(), &patch, &ApplyOptions::default()).unwrap();
    assert!(report.references[0].address != 0);
    assert_eq!(target.ask("1"), "5");
    revert(target.pid(), None, Duration::from_secs(5)).unwrap();
    assert_eq!(target.ask("1"), "2");
}

#[test]
fn function_is_patched_while_another_thread_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &["busy"]);
    let patch = replace_function(&exe, "answer", return_constant(12));
    let report = apply(target.pid(), &patch, &ApplyOptions::default()).unwrap();
    assert_eq!(report.attempts, 1);
    assert_eq!(target.ask("1"), "12");
    revert(target.pid(), Some(&patch.meta.id), Duration::from_secs(5)).unwrap();
    assert_eq!(target.ask("1"), "2");
    assert!(target.alive());
}

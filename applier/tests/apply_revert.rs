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

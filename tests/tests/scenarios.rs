//! Each accepted scenario of DESIGN §6 that has a fixture: start the original program, build the
//! patch from `fixtures/NAME/prog.c` → `fixtures/NAME/new/prog.c`, apply it, see the new behaviour,
//! revert it, see the old behaviour, target alive throughout.

use ulp_tests::{Flavor, Session, GLOBAL_FN, LIBC_CALLS, NEW_HELPER, STATIC_FN, STRING_LITERAL};

#[test]
fn global_function_body_change_takes_effect_and_reverts() {
    GLOBAL_FN.check(Flavor::PIE_O2);
}

#[test]
fn static_function_body_change_takes_effect_and_reverts() {
    STATIC_FN.check(Flavor::PIE_O2);
}

#[test]
fn changed_string_literal_is_printed_after_patch() {
    STRING_LITERAL.check(Flavor::PIE_O2);
}

#[test]
fn patched_function_calls_new_static_helper() {
    NEW_HELPER.check(Flavor::PIE_O2);
}

#[test]
fn patched_code_calls_printf_and_malloc() {
    LIBC_CALLS.check(Flavor::PIE_O2);
}

#[test]
fn static_local_keeps_its_value_across_patch() {
    let mut s = Session::start("static_local", Flavor::PIE_O2);
    for n in 1..=3 {
        assert_eq!(s.ask("next"), format!("ticket {n}"));
    }
    s.apply();
    for n in 4..=5 {
        assert_eq!(s.ask("next"), format!("ticket {n} (patched)"));
    }
    s.revert();
    for n in 6..=7 {
        assert_eq!(s.ask("next"), format!("ticket {n}"));
    }
    s.target.assert_alive();
}

#[test]
fn patch_can_be_applied_again_after_revert() {
    let mut s = Session::start("global_fn", Flavor::PIE_O2);
    assert_eq!(s.ask("10"), "14757");
    s.apply();
    assert_eq!(s.ask("10"), "3051755");
    s.revert();
    assert_eq!(s.ask("10"), "14757");
    s.apply();
    assert_eq!(s.ask("10"), "3051755");
    s.revert();
    assert_eq!(s.ask("10"), "14757");
    s.target.assert_alive();
}

#[test]
fn target_blocked_in_read_during_patch_answers_normally() {
    // Between queries every fixture sits in read(2) on its stdin; the fixture answers "EINTR" if
    // that read fails with EINTR, so the next answer would be "EINTR" instead of the expected one.
    let mut s = Session::start("static_local", Flavor::PIE_O2);
    assert_eq!(s.ask("next"), "ticket 1");
    s.apply();
    assert_eq!(s.ask("next"), "ticket 2 (patched)");
    s.revert();
    assert_eq!(s.ask("next"), "ticket 3");
    s.target.assert_alive();
}

#[test]
fn change_that_alters_a_running_caller_is_refused_or_fully_applied() {
    // fixtures/caller_registers: with GCC's -fipa-ra at -O2, main() may depend on the registers
    // price() clobbers, so main() is part of the patch; main() never returns. Either ulp-build
    // refuses (2), or ulp-apply refuses (2) and the target answers as before, or (a compiler
    // whose main() does not change) the patch takes effect. Never a half-applied target.
    let case = ulp_tests::CALLER_REGISTERS;
    let (old, new) = ulp_tests::scenario(case.fixture);
    let flavor = Flavor::PIE_O2;
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = ulp_tests::compile_fixture(&old, dir.path(), flavor);
    let patch = dir.path().join("fix.ulp");
    let built = ulp_tests::ulp_build(&old, &new, &patch, &flavor.cflags(), &[]);
    if built.code == Some(2) {
        built.expect_one_error_line();
        return;
    }
    built.expect_code(0, "ulp-build");
    let mut target = ulp_tests::Target::spawn(&exe);
    assert_eq!(target.ask(case.query), case.old);
    let applied = ulp_tests::ulp_apply(
        target.pid(),
        &[patch.as_os_str(), "--timeout".as_ref(), "1".as_ref()],
    );
    match applied.code {
        Some(2) => {
            applied.expect_one_error_line();
            assert_eq!(
                target.ask(case.query),
                case.old,
                "refused: target untouched"
            );
        }
        Some(0) => {
            assert_eq!(target.ask(case.query), case.new, "applied");
            ulp_tests::revert_ok(target.pid());
            assert_eq!(target.ask(case.query), case.old, "reverted");
        }
        _ => panic!("ulp-apply: unexpected result {applied:?}"),
    }
    target.assert_alive();
}

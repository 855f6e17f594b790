//! The same patches in position-independent and fixed-address executables, optimised and not.

use ulp_tests::{Flavor, GLOBAL_FN, LIBC_CALLS, NEW_HELPER, STATIC_FN, STRING_LITERAL};

fn global_and_static_functions_are_patched(flavor: Flavor) {
    GLOBAL_FN.check(flavor);
    STATIC_FN.check(flavor);
    NEW_HELPER.check(flavor);
}

#[test]
fn pie_executable_at_o2_is_patched() {
    global_and_static_functions_are_patched(Flavor::PIE_O2);
}

#[test]
fn pie_executable_at_o0_is_patched() {
    global_and_static_functions_are_patched(Flavor::PIE_O0);
}

#[test]
fn non_pie_executable_at_o2_is_patched() {
    global_and_static_functions_are_patched(Flavor::NO_PIE_O2);
}

#[test]
fn non_pie_executable_at_o0_is_patched() {
    global_and_static_functions_are_patched(Flavor::NO_PIE_O0);
}

#[test]
fn string_literal_and_libc_calls_in_non_pie_executable() {
    STRING_LITERAL.check(Flavor::NO_PIE_O2);
    LIBC_CALLS.check(Flavor::NO_PIE_O2);
}

#[test]
fn static_local_keeps_its_value_in_non_pie_executable_at_o0() {
    let mut s = ulp_tests::Session::start("static_local", Flavor::NO_PIE_O0);
    assert_eq!(s.ask("next"), "ticket 1");
    assert_eq!(s.ask("next"), "ticket 2");
    s.apply();
    assert_eq!(s.ask("next"), "ticket 3 (patched)");
    s.revert();
    assert_eq!(s.ask("next"), "ticket 4");
    s.target.assert_alive();
}

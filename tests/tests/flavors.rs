//! The same patches in position-independent and fixed-address executables, optimised and not.

use ulp_tests::{check_apply_and_revert, Flavor};

fn global_and_static_functions_are_patched(flavor: Flavor) {
    check_apply_and_revert("global_fn", flavor, "10", "14757", "3051755");
    check_apply_and_revert("static_fn", flavor, "10", "3976595158", "1997504766");
    check_apply_and_revert("new_helper", flavor, "10", "550", "505");
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
    check_apply_and_revert(
        "string_literal",
        Flavor::NO_PIE_O2,
        "Ann",
        "Hello, Ann!",
        "Good morning, Ann, from the patch!",
    );
    check_apply_and_revert(
        "libc_calls",
        Flavor::NO_PIE_O2,
        "7",
        "report 14",
        "report 21 from the heap",
    );
}

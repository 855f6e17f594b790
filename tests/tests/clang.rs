//! Targets built with clang and patches built with `ulp-build --cc clang`: a small matrix of
//! PIE/non-PIE and -O0/-O2/-Os on a few scenarios.

use ulp_tests::{Flavor, FN_POINTER, GLOBAL_FN, NEW_FUNCTIONS, NEW_HELPER, STATIC_FN};

#[test]
fn clang_pie_o2() {
    let flavor = Flavor::PIE_O2.clang();
    GLOBAL_FN.check(flavor);
    STATIC_FN.check(flavor);
    NEW_FUNCTIONS.check(flavor);
    FN_POINTER.check(flavor);
}

#[test]
fn clang_pie_o0() {
    let flavor = Flavor::PIE_O0.clang();
    GLOBAL_FN.check(flavor);
    NEW_HELPER.check(flavor);
}

#[test]
fn clang_pie_os() {
    let flavor = Flavor::PIE_OS.clang();
    STATIC_FN.check(flavor);
    NEW_FUNCTIONS.check(flavor);
}

#[test]
fn clang_non_pie_o2() {
    let flavor = Flavor::NO_PIE_O2.clang();
    GLOBAL_FN.check(flavor);
    NEW_HELPER.check(flavor);
}

#[test]
fn clang_with_endbr64_entries() {
    FN_POINTER.check(Flavor::PIE_O2_CET.clang());
}

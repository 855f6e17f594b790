//! The build-time refusals of DESIGN §6 end to end: `ulp-build` exits 2, writes no patch, and names
//! the offending symbol on its `error: ` line. No target is needed.

use ulp_tests::{scenario, ulp_build, Flavor};

/// Builds the patch of fixture `name` at `flavor` and checks the refusal naming `symbol`.
#[track_caller]
fn expect_refusal(name: &str, flavor: Flavor, symbol: &str) {
    let (old, new) = scenario(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let patch = dir.path().join("fix.ulp");
    let out = ulp_build(&old, &new, &patch, &flavor.cflags(), &flavor.build_args());
    out.expect_code(2, &format!("ulp-build {name} at {flavor:?}"));
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert!(
        errors.iter().any(|l| l.contains(&format!("'{symbol}'"))),
        "an error line names '{symbol}':\n{}",
        out.stderr
    );
    assert!(!patch.exists(), "no patch written when refused");
}

#[test]
fn changed_initializer_of_existing_global_is_refused() {
    expect_refusal("refuse_initializer", Flavor::PIE_O2, "limit");
    expect_refusal("refuse_initializer", Flavor::NO_PIE_O0, "limit");
    expect_refusal("refuse_initializer", Flavor::PIE_O2.clang(), "limit");
}

#[test]
fn static_made_global_is_refused() {
    expect_refusal("refuse_static_to_global", Flavor::PIE_O2, "limit");
    expect_refusal("refuse_static_to_global", Flavor::PIE_O2.clang(), "limit");
}

#[test]
fn changed_constructor_is_refused() {
    expect_refusal("refuse_constructor", Flavor::PIE_O2, "setup");
    expect_refusal("refuse_constructor", Flavor::PIE_O2.clang(), "setup");
}

#[test]
fn function_smaller_than_a_jump_is_refused() {
    expect_refusal("refuse_too_small", Flavor::PIE_O2, "tiny");
    // 3 bytes after endbr64 still do not hold the jump.
    expect_refusal("refuse_too_small", Flavor::PIE_O2_CET, "tiny");
    expect_refusal("refuse_too_small", Flavor::PIE_O2.clang(), "tiny");
}

//! What the tools answer when there is nothing to do or nothing to do it to (DESIGN §5 exit codes).

use std::path::Path;
use std::process::Command;

use ulp_tests::{scenario, ulp_apply, ulp_build, Flavor, Session};

/// The pid of a process that has exited and been reaped.
fn pid_that_does_not_exist() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} was reused"
    );
    pid
}

#[test]
fn apply_to_a_pid_that_does_not_exist_is_an_error() {
    let (old, new) = scenario("global_fn");
    let dir = tempfile::tempdir().expect("tempdir");
    let patch = dir.path().join("fix.ulp");
    ulp_build(&old, &new, &patch, &Flavor::PIE_O2.cflags(), &[]).expect_code(0, "ulp-build");

    let pid = pid_that_does_not_exist();
    ulp_apply(pid, &[&patch])
        .expect_code(1, "ulp-apply to a missing pid")
        .expect_one_error_line();
}

#[test]
fn revert_in_a_pid_that_does_not_exist_is_an_error() {
    let pid = pid_that_does_not_exist();
    ulp_apply(pid, &["--revert"])
        .expect_code(1, "ulp-apply --revert in a missing pid")
        .expect_one_error_line();
}

#[test]
fn unchanged_sources_build_no_patch() {
    let (old, _) = scenario("global_fn");
    let dir = tempfile::tempdir().expect("tempdir");
    // A copy with the same file name, so only the directory differs.
    let copy = dir.path().join("prog.c");
    std::fs::copy(&old, &copy).expect("copy fixture");
    let out = ulp_build(
        &old,
        &copy,
        &dir.path().join("fix.ulp"),
        &Flavor::PIE_O2.cflags(),
        &[],
    );
    out.expect_code(3, "ulp-build of identical sources");
}

#[test]
fn missing_source_file_is_an_error() {
    let (old, _) = scenario("global_fn");
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("prog.c");
    let out = ulp_build(
        &old,
        &missing,
        &dir.path().join("fix.ulp"),
        &Flavor::PIE_O2.cflags(),
        &[],
    );
    out.expect_code(1, "ulp-build of a missing file")
        .expect_one_error_line();
}

#[test]
fn patch_applied_twice_is_refused_and_stays_applied() {
    let mut s = Session::start("global_fn", Flavor::PIE_O2);
    s.apply();
    assert_eq!(s.ask("10"), "3051755");
    let pid = s.pid();
    ulp_apply(pid, &[&s.patch])
        .expect_code(2, "second ulp-apply of the same patch")
        .expect_one_error_line();
    assert_eq!(s.ask("10"), "3051755", "the first application still works");
    s.revert();
    assert_eq!(s.ask("10"), "14757");
    s.target.assert_alive();
}

#[test]
fn patch_for_another_program_is_refused_and_the_target_keeps_its_behaviour() {
    // The static_fn fixture's patch replaces a function that global_fn's program does not have.
    let mut s = Session::start("global_fn", Flavor::PIE_O2);
    let (other_old, other_new) = scenario("static_fn");
    let other = s.dir.path().join("other.ulp");
    ulp_build(
        &other_old,
        &other_new,
        &other,
        &Flavor::PIE_O2.cflags(),
        &[],
    )
    .expect_code(0, "ulp-build");
    let maps_before = std::fs::read_to_string(format!("/proc/{}/maps", s.pid())).expect("maps");
    ulp_apply(s.pid(), &[&other])
        .expect_code(2, "ulp-apply of another program's patch")
        .expect_one_error_line();
    let maps_after = std::fs::read_to_string(format!("/proc/{}/maps", s.pid())).expect("maps");
    assert_eq!(
        maps_before, maps_after,
        "the refused apply left a mapping behind"
    );
    assert_eq!(s.ask("10"), "14757");
    s.target.assert_alive();
}

#[test]
fn revert_names_a_patch_by_name_or_number() {
    let mut s = Session::start("global_fn", Flavor::PIE_O2);
    s.apply();
    assert_eq!(s.ask("10"), "3051755");
    let pid = s.pid();
    ulp_apply(pid, &["--revert", "no-such-patch"])
        .expect_code(1, "ulp-apply --revert of an unknown name")
        .expect_one_error_line();
    assert_eq!(s.ask("10"), "3051755", "a failed revert changed nothing");
    ulp_apply(pid, &["--revert", "global_fn"]).expect_code(0, "ulp-apply --revert by name");
    assert_eq!(s.ask("10"), "14757");
    // Numbers count the patches applied now: with none left, the next one is #1 again.
    s.apply();
    ulp_apply(pid, &["--revert", "#1"]).expect_code(0, "ulp-apply --revert by number");
    assert_eq!(s.ask("10"), "14757");
    s.target.assert_alive();
}

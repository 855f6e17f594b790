//! The accepted scenarios of DESIGN §6 beyond the first ones (`scenarios.rs`): new functions and
//! new data, function pointers, recursion, jump tables, GCC clones, -Os and endbr64 code, two
//! files with a same-named static function, and the changes that are no change (exit 3).

use std::path::Path;

use ulp_tests::{
    apply_ok, compile_fixture_sources, disassemble, fixtures_dir, revert_ok, scenario,
    symbol_names, ulp_build, Flavor, Session, Target, FN_POINTER, GCC_CLONES, IFUNC_CALLS,
    NEW_FUNCTIONS, RECURSION, STATIC_FN, SWITCH_TABLE,
};

/// Builds a patch of the fixture `name` (which must exit 3: no change) at `flavor`.
#[track_caller]
fn expect_no_change(name: &str, flavor: Flavor) {
    let (old, new) = scenario(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let patch = dir.path().join("fix.ulp");
    let out = ulp_build(&old, &new, &patch, &flavor.cflags(), &flavor.build_args());
    out.expect_code(3, &format!("ulp-build {name} at {flavor:?}"));
    assert!(
        out.stderr.contains("no change"),
        "exit 3 says `no change`: {out:?}"
    );
    assert!(!patch.exists(), "no patch written on exit 3");
}

#[test]
fn literal_that_only_moved_is_no_change() {
    expect_no_change("literal_moved", Flavor::PIE_O2);
    expect_no_change("literal_moved", Flavor::NO_PIE_O0);
}

#[test]
fn line_number_only_change_is_no_change() {
    expect_no_change("line_only", Flavor::PIE_O2);
}

#[test]
fn patched_code_calls_libc_functions_resolved_through_ifuncs() {
    IFUNC_CALLS.check(Flavor::PIE_O2);
    IFUNC_CALLS.check(Flavor::NO_PIE_O2);
}

#[test]
fn patched_function_calls_new_static_and_new_global_function() {
    NEW_FUNCTIONS.check(Flavor::PIE_O2);
}

#[test]
fn new_initialized_and_zero_initialized_globals_start_fresh_and_persist() {
    let mut s = Session::start("new_data", Flavor::PIE_O2);
    assert_eq!(s.ask("5"), "score 10");
    assert_eq!(s.ask("7"), "score 14");
    s.apply();
    // bonus starts at 100 (.data), patched_calls at 0 (.bss); both persist from call to call.
    assert_eq!(s.ask("5"), "score 10 bonus 105 calls 1");
    assert_eq!(s.ask("7"), "score 14 bonus 112 calls 2");
    assert_eq!(s.ask("1"), "score 2 bonus 113 calls 3");
    s.revert();
    assert_eq!(s.ask("5"), "score 10");
    s.target.assert_alive();
}

#[test]
fn function_pointer_stored_before_the_patch_reaches_new_code() {
    let mut s = Session::start(FN_POINTER.fixture, Flavor::PIE_O2);
    assert_eq!(s.ask("cube 7"), "cube 343");
    assert_eq!(s.ask("square 7"), "square 49");
    s.apply();
    assert_eq!(s.ask("cube 7"), "cube 1343");
    assert_eq!(s.ask("square 7"), "square 49", "unchanged function");
    s.revert();
    assert_eq!(s.ask("cube 7"), "cube 343");
    s.target.assert_alive();
}

#[test]
fn recursive_function_is_patched_while_idle() {
    let mut s = Session::start(RECURSION.fixture, Flavor::PIE_O2);
    let calls = disassemble(&s.exe, "walk");
    assert!(
        calls
            .lines()
            .any(|l| l.contains("call") && l.contains("<walk>")),
        "walk() calls itself in the built target:\n{calls}"
    );
    assert_eq!(s.ask("20"), RECURSION.old);
    assert_eq!(s.ask("0"), "1");
    s.apply();
    assert_eq!(s.ask("20"), RECURSION.new);
    assert_eq!(s.ask("0"), "2");
    s.revert();
    assert_eq!(s.ask("20"), RECURSION.old);
    s.target.assert_alive();
}

#[test]
fn switch_with_a_jump_table_answers_every_case_after_patch() {
    // (query, old answer, new answer): cases 2 and 7 changed, the others did not.
    const QUERIES: [(&str, &str, &str); 6] = [
        ("0 9", "28", "28"),
        ("2 9", "72", "144"),
        ("7 9", "-10", "709"),
        ("9 9", "2", "2"),
        ("3 100", "25", "25"),
        ("12 5", "-1", "-1"),
    ];
    for flavor in [Flavor::PIE_O2, Flavor::NO_PIE_O2] {
        let mut s = Session::start(SWITCH_TABLE.fixture, flavor);
        let code = disassemble(&s.exe, "calc");
        assert!(
            code.lines().any(|l| l.contains("jmp") && l.contains('*')),
            "calc() has an indirect jump (a jump table) at {flavor:?}:\n{code}"
        );
        for (q, old, _) in QUERIES {
            assert_eq!(s.ask(q), old, "before the patch, {q} at {flavor:?}");
        }
        s.apply();
        for (q, _, new) in QUERIES {
            assert_eq!(s.ask(q), new, "after the patch, {q} at {flavor:?}");
        }
        s.revert();
        for (q, old, _) in QUERIES {
            assert_eq!(s.ask(q), old, "after the revert, {q} at {flavor:?}");
        }
        s.target.assert_alive();
    }
}

#[test]
fn body_change_at_os_is_patched() {
    STATIC_FN.check(Flavor::PIE_OS);
    NEW_FUNCTIONS.check(Flavor::PIE_OS);
}

#[test]
fn body_change_with_endbr64_entries_is_patched() {
    for flavor in [
        Flavor::PIE_O2_CET,
        Flavor::NO_PIE_O2.with_extra(&["-fcf-protection=full"]),
    ] {
        let mut s = Session::start(FN_POINTER.fixture, flavor);
        let code = disassemble(&s.exe, "cube");
        assert!(
            code.contains("endbr64"),
            "cube() starts with endbr64 at {flavor:?}:\n{code}"
        );
        assert_eq!(s.ask(FN_POINTER.query), FN_POINTER.old);
        s.apply();
        assert_eq!(s.ask(FN_POINTER.query), FN_POINTER.new);
        s.revert();
        assert_eq!(s.ask(FN_POINTER.query), FN_POINTER.old);
        s.target.assert_alive();
    }
    STATIC_FN.check(Flavor::PIE_O2_CET);
}

#[test]
fn gcc_clones_constprop_and_isra_are_patched() {
    let mut s = Session::start(GCC_CLONES.fixture, Flavor::PIE_O2);
    let symbols = symbol_names(&s.exe);
    for prefix in ["scale.constprop.", "norm.isra."] {
        assert!(
            symbols.iter().any(|n| n.starts_with(prefix)),
            "the target has a {prefix}N clone (else this test tests nothing): {symbols:?}"
        );
    }
    assert_eq!(s.ask(GCC_CLONES.query), GCC_CLONES.old);
    s.apply();
    assert_eq!(s.ask(GCC_CLONES.query), GCC_CLONES.new);
    s.revert();
    assert_eq!(s.ask(GCC_CLONES.query), GCC_CLONES.old);
    s.target.assert_alive();
}

/// Starts `fixtures/same_static` (prog.c, a.c, b.c: a.c and b.c each have a static `helper`),
/// builds a patch of a.c with `build_args` (the file arguments), and checks that only a.c's
/// helper changed.
fn same_named_static_in_two_files(build_args: &[String]) {
    let flavor = Flavor::PIE_O2;
    let fx = fixtures_dir().join("same_static");
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = [fx.join("prog.c"), fx.join("a.c"), fx.join("b.c")];
    let sources: Vec<&Path> = sources.iter().map(|p| p.as_path()).collect();
    let exe = compile_fixture_sources(&sources, dir.path(), flavor);
    let helpers = symbol_names(&exe)
        .into_iter()
        .filter(|n| n == "helper")
        .count();
    assert_eq!(helpers, 2, "the target has two local `helper` symbols");

    let patch = dir.path().join("fix.ulp");
    let mut cmd = std::process::Command::new(ulp_tests::tool("ulp-build"));
    cmd.args(build_args).arg("-o").arg(&patch);
    for flag in flavor.cflags() {
        cmd.arg(format!("--cflags={flag}"));
    }
    ulp_tests::run(&mut cmd).expect_code(0, "ulp-build of a.c");

    let mut target = Target::spawn(&exe);
    assert_eq!(target.ask("10"), "146 147");
    apply_ok(target.pid(), &patch);
    assert_eq!(target.ask("10"), "246 147", "only a.c's helper changed");
    revert_ok(target.pid());
    assert_eq!(target.ask("10"), "146 147");
    target.assert_alive();
}

#[test]
fn same_named_static_in_two_files_only_the_right_one_is_patched() {
    let fx = fixtures_dir().join("same_static");
    same_named_static_in_two_files(&[
        fx.join("a.c").display().to_string(),
        fx.join("new/a.c").display().to_string(),
    ]);
}

#[test]
fn same_named_static_in_two_files_with_pair() {
    let fx = fixtures_dir().join("same_static");
    same_named_static_in_two_files(&[
        "--pair".to_string(),
        format!(
            "{}:{}",
            fx.join("a.c").display(),
            fx.join("new/a.c").display()
        ),
    ]);
}

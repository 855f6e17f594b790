//! Thread-local storage and static executables, end to end (issue 4, item 3).
//!
//! fixtures/tls: the patched function `bump` reads and updates a `static __thread` variable
//! (local-exec, `R_X86_64_TPOFF32`) and a global one accessed initial-exec (`R_X86_64_GOTTPOFF`),
//! in the main thread and in a second thread. Each thread keeps its own values across the patch and
//! the revert; only the steps (and the " new" suffix) change.
//!
//! Static executables (`-static`, `-static-pie`) have no libc.so to borrow a `syscall` instruction
//! from and no dynamic section: the applier uses the executable's own text and `.symtab`.

use std::path::{Path, PathBuf};

use ulp_tests::{
    apply_ok, compile_with, revert_ok, scenario, ulp_apply, ulp_build, Flavor, Target, GLOBAL_FN,
};

/// How the target executable is linked.
#[derive(Clone, Copy, Debug)]
enum Link {
    /// As the flavor says (`-pie` or `-no-pie`), against libc.so.
    Dynamic,
    /// `-static` (needs `-fno-pie` code) or, for a PIE flavor, `-static-pie`.
    Static,
}

/// Compiles fixture `name` for `flavor` and `link`, builds its patch; returns (dir, exe, patch).
fn prepare(name: &str, flavor: Flavor, link: Link) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (old, new) = scenario(name);
    let dir = tempfile::Builder::new()
        .prefix(&format!("ulp-test-{name}-"))
        .tempdir()
        .expect("tempdir");
    let exe = dir.path().join("target-program");
    let ldflags = match (link, flavor.pie) {
        (Link::Dynamic, _) => flavor.ldflags(),
        (Link::Static, false) => vec!["-static".into(), "-pthread".into()],
        (Link::Static, true) => vec!["-static-pie".into(), "-pthread".into()],
    };
    compile_with(flavor.cc, &[&old], &exe, &flavor.cflags(), &ldflags);
    let patch = dir.path().join(format!("{name}.ulp"));
    let mut extra = vec!["--name", name];
    extra.extend(flavor.build_args());
    ulp_build(&old, &new, &patch, &flavor.cflags(), &extra).expect_code(0, "ulp-build");
    (dir, exe, patch)
}

/// Whether `exe` has no `PT_INTERP` program header (no dynamic linker: `-static`, `-static-pie`).
fn is_static(exe: &Path) -> bool {
    let data = std::fs::read(exe).expect("read exe");
    let u16_at = |at: usize| u16::from_le_bytes([data[at], data[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) != 3 // PT_INTERP
    })
}

/// The TLS scenario: state kept per thread across apply and revert, new steps while applied.
fn thread_locals_keep_their_values(flavor: Flavor, link: Link) {
    let (_dir, exe, patch) = prepare("tls", flavor, link);
    if matches!(link, Link::Static) {
        assert!(is_static(&exe), "{} is statically linked", exe.display());
    }
    let mut t = Target::spawn(&exe);
    assert_eq!(t.ask("main"), "1 1010");
    assert_eq!(t.ask("main"), "2 1020");
    assert_eq!(
        t.ask("thread"),
        "1 1010",
        "the second thread has its own values"
    );
    apply_ok(t.pid(), &patch);
    assert_eq!(
        t.ask("main"),
        "4 1120 new",
        "main thread: values kept, new steps"
    );
    assert_eq!(
        t.ask("thread"),
        "3 1110 new",
        "second thread: its own values kept"
    );
    assert_eq!(t.ask("thread"), "5 1210 new");
    assert_eq!(t.ask("main"), "6 1220 new");
    revert_ok(t.pid());
    assert_eq!(
        t.ask("main"),
        "7 1230",
        "after the revert: old steps, values kept"
    );
    assert_eq!(t.ask("thread"), "6 1220");
    t.assert_alive();
}

#[test]
fn tls_pie_o2() {
    thread_locals_keep_their_values(Flavor::PIE_O2, Link::Dynamic);
}

#[test]
fn tls_non_pie_o0() {
    thread_locals_keep_their_values(Flavor::NO_PIE_O0, Link::Dynamic);
}

#[test]
fn tls_pie_o2_clang() {
    thread_locals_keep_their_values(Flavor::PIE_O2.clang(), Link::Dynamic);
}

#[test]
fn tls_static_executable() {
    thread_locals_keep_their_values(Flavor::NO_PIE_O2, Link::Static);
}

#[test]
fn tls_static_pie_executable() {
    thread_locals_keep_their_values(Flavor::PIE_O2, Link::Static);
}

/// A plain function of a static executable: apply, revert, apply again.
fn static_executable_function(flavor: Flavor) {
    let case = GLOBAL_FN;
    let (_dir, exe, patch) = prepare(case.fixture, flavor, Link::Static);
    assert!(is_static(&exe), "{} is statically linked", exe.display());
    let mut t = Target::spawn(&exe);
    assert_eq!(t.ask(case.query), case.old);
    apply_ok(t.pid(), &patch);
    assert_eq!(t.ask(case.query), case.new);
    revert_ok(t.pid());
    assert_eq!(t.ask(case.query), case.old);
    apply_ok(t.pid(), &patch);
    assert_eq!(t.ask(case.query), case.new);
    t.assert_alive();
}

#[test]
fn static_executable_non_pie() {
    static_executable_function(Flavor::NO_PIE_O2);
}

#[test]
fn static_pie_executable() {
    static_executable_function(Flavor::PIE_O2);
}

/// Builds fixture `name` with `cflags` and expects a refusal whose `error:` line contains `text`.
#[track_caller]
fn expect_refusal(name: &str, cflags: &[String], text: &str) {
    let (old, new) = scenario(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let patch = dir.path().join("fix.ulp");
    let out = ulp_build(&old, &new, &patch, cflags, &[]);
    out.expect_code(2, &format!("ulp-build {name}"));
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains(text)),
        "an error line contains {text:?}:\n{}",
        out.stderr
    );
    assert!(!patch.exists(), "no patch written when refused");
}

#[test]
fn new_thread_local_variable_is_refused() {
    expect_refusal(
        "refuse_new_tls",
        &Flavor::PIE_O2.cflags(),
        "new thread-local variable 'calls'",
    );
}

#[test]
fn dynamic_tls_models_are_refused() {
    // -fPIC code reaches its static thread-local variable local-dynamic (TLSLD + DTPOFF32).
    let mut cflags = Flavor::PIE_O2.cflags();
    cflags[1] = "-fPIC".into();
    expect_refusal(
        "tls",
        &cflags,
        "local-dynamic model (R_X86_64_TLSLD, R_X86_64_DTPOFF32): not supported",
    );
    cflags.push("-ftls-model=global-dynamic".into());
    expect_refusal("tls", &cflags, "not supported");
}

/// Builds fixtures/tls_lib: libtlsdep.so and the program linked against it, in `dir`.
fn build_tls_lib(dir: &Path) -> PathBuf {
    let (old, _) = scenario("tls_lib");
    let lib = dir.join("libtlsdep.so");
    let lib_source = old.parent().unwrap().join("lib.c");
    compile_with(
        "gcc",
        &[&lib_source],
        &lib,
        &["-O2".into(), "-fPIC".into()],
        &["-shared".into()],
    );
    let exe = dir.join("target-program");
    let mut ldflags = Flavor::PIE_O2.ldflags();
    ldflags.extend([
        format!("-L{}", dir.display()),
        "-ltlsdep".into(),
        format!("-Wl,-rpath,{}", dir.display()),
    ]);
    compile_with("gcc", &[&old], &exe, &Flavor::PIE_O2.cflags(), &ldflags);
    exe
}

/// A thread-local variable of a shared library, reached initial-exec: its offset is the one the
/// dynamic linker wrote into the program's GOT (`R_X86_64_TPOFF64`).
#[test]
fn tls_of_a_shared_library() {
    let (old, new) = scenario("tls_lib");
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build_tls_lib(dir.path());
    let patch = dir.path().join("tls_lib.ulp");
    ulp_build(&old, &new, &patch, &Flavor::PIE_O2.cflags(), &[]).expect_code(0, "ulp-build");

    let mut t = Target::spawn(&exe);
    assert_eq!(t.ask("main"), "51 51");
    assert_eq!(t.ask("thread"), "51 51");
    apply_ok(t.pid(), &patch);
    assert_eq!(
        t.ask("main"),
        "58 58 new",
        "the library sees what the patch wrote"
    );
    assert_eq!(t.ask("thread"), "58 58 new");
    assert_eq!(t.ask("thread"), "65 65 new");
    revert_ok(t.pid());
    assert_eq!(t.ask("main"), "59 59");
    t.assert_alive();
}

/// A library variable that nothing in the program reaches initial-exec has no thread-pointer
/// offset the applier can read: refused with one error line, the target untouched.
#[test]
fn tls_of_a_shared_library_not_reached_initial_exec_is_refused() {
    let (old, _) = scenario("tls_lib");
    let new = old.parent().unwrap().join("unreached/prog.c");
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build_tls_lib(dir.path());
    let patch = dir.path().join("unreached.ulp");
    ulp_build(&old, &new, &patch, &Flavor::PIE_O2.cflags(), &[]).expect_code(0, "ulp-build");

    let mut t = Target::spawn(&exe);
    assert_eq!(t.ask("main"), "51 51");
    let out = ulp_apply(t.pid(), &[patch.as_os_str()]);
    out.expect_code(1, "ulp-apply").expect_one_error_line();
    assert!(
        out.stderr.contains("thread-local 'lib_other'")
            && out.stderr.contains("not reached initial-exec"),
        "{}",
        out.stderr
    );
    assert_eq!(t.ask("main"), "52 52", "the old code still runs");
    t.assert_alive();
}

//! Targets other than an unstripped main executable (issue 4 item 3): a function inside a shared
//! library (the patch names the library, found by soname/file name and build-id), a library whose
//! build-id differs from the patch's, and a stripped executable whose symbols come from a separate
//! debug file found by build-id under `--debug-dir`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ulp_tests::{
    compile, compile_fixture, fixtures_dir, revert_ok, run, scenario, ulp_apply, ulp_build, Flavor,
    Target, STATIC_FN,
};

const LIB_CFLAGS: [&str; 2] = ["-O2", "-fPIC"];

fn lib_cflags() -> Vec<String> {
    LIB_CFLAGS.iter().map(|s| s.to_string()).collect()
}

/// Builds `fixtures/shlib/lib.c` as `dir/libshape.so.1` (soname `libshape.so.1`, plus the
/// development link `libshape.so`) with `link_extra`, and the program using it; returns the
/// program and the development link.
fn build_shape(dir: &Path, link_extra: &[&str]) -> (PathBuf, PathBuf) {
    let src = fixtures_dir().join("shlib");
    let lib = dir.join("libshape.so.1");
    let mut ldflags = vec!["-shared".to_string(), "-Wl,-soname,libshape.so.1".into()];
    ldflags.extend(link_extra.iter().map(|s| s.to_string()));
    compile(&[src.join("lib.c")], &lib, &lib_cflags(), &ldflags);
    let link = dir.join("libshape.so");
    std::os::unix::fs::symlink("libshape.so.1", &link).expect("symlink libshape.so");
    let exe = dir.join("shape-prog");
    let mut cflags = vec!["-O2".to_string(), "-fPIE".into()];
    cflags.push(format!("-I{}", fixtures_dir().join("common").display()));
    compile(
        &[src.join("prog.c")],
        &exe,
        &cflags,
        &[
            "-pie".into(),
            format!("-L{}", dir.display()),
            "-lshape".into(),
            format!("-Wl,-rpath,{}", dir.display()),
        ],
    );
    (exe, link)
}

/// `ulp-build lib.c new/lib.c --cflags "-O2 -fPIC" --target LIB`.
fn build_shape_patch(dir: &Path, lib: &Path) -> PathBuf {
    let src = fixtures_dir().join("shlib");
    let patch = dir.join("shape.ulp");
    ulp_build(
        &src.join("lib.c"),
        &src.join("new/lib.c"),
        &patch,
        &lib_cflags(),
        &[
            "--name",
            "shape",
            "--target",
            lib.to_str().expect("utf-8 path"),
        ],
    )
    .expect_code(0, "ulp-build --target libshape.so");
    patch
}

#[test]
fn a_function_in_a_shared_library_is_patched_and_reverted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (exe, lib) = build_shape(dir.path(), &[]);
    let patch = build_shape_patch(dir.path(), &lib);
    let mut target = Target::spawn(&exe);
    assert_eq!(target.ask("6 4"), "area 30 calls 1");
    let out = ulp_apply(target.pid(), &[patch.as_os_str(), "--json".as_ref()]);
    out.expect_code(0, "ulp-apply (library target)");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("--json");
    let object = report["target_object"].as_str().unwrap_or_default();
    assert!(
        object.ends_with("/libshape.so.1"),
        "patched object: {report:#}"
    );
    // The -fPIC code reaches the library's global through the GOT (REX_GOTPCRELX; the executable's
    // COPY-relocated instance, as the library sees it), and calls its static and exported
    // functions and libc's div() (PLT32).
    let references: Vec<&str> = report["references"]
        .as_array()
        .expect("references")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for name in ["shape_calls", "shape_scale", "lib.c:margin", "div"] {
        assert!(references.contains(&name), "{name} in {report:#}");
    }
    // shape_scale(24) + margin(6) + 24 % 5; the counter lives on through the patch.
    assert_eq!(target.ask("6 4"), "area 82 calls 2", "after the patch");
    revert_ok(target.pid());
    assert_eq!(target.ask("6 4"), "area 30 calls 3", "after the revert");
    target.assert_alive();
}

#[test]
fn a_library_with_another_build_id_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The running library gets a build-id of its own choosing; the patch is bound to the real one.
    let (exe, _) = build_shape(
        dir.path(),
        &["-Wl,--build-id=0x0123456789abcdef0123456789abcdef01234567"],
    );
    let other = tempfile::tempdir().expect("tempdir");
    let (_, lib) = build_shape(other.path(), &[]);
    let patch = build_shape_patch(other.path(), &lib);
    let mut target = Target::spawn(&exe);
    assert_eq!(target.ask("6 4"), "area 30 calls 1");
    let out = ulp_apply(target.pid(), &[&patch]);
    out.expect_code(2, "ulp-apply with a wrong build-id")
        .expect_one_error_line();
    assert!(
        out.stderr.contains("libshape.so.1")
            && out
                .stderr
                .contains("0123456789abcdef0123456789abcdef01234567"),
        "the refusal names the library and its build-id: {}",
        out.stderr
    );
    assert_eq!(target.ask("6 4"), "area 30 calls 2", "target unchanged");
}

#[test]
fn a_library_the_process_has_not_loaded_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, lib) = build_shape(dir.path(), &[]);
    let patch = build_shape_patch(dir.path(), &lib);
    let (old, _) = scenario(STATIC_FN.fixture);
    let exe = compile_fixture(&old, dir.path(), Flavor::PIE_O2);
    let mut target = Target::spawn(&exe);
    let out = ulp_apply(target.pid(), &[&patch]);
    out.expect_code(2, "ulp-apply to a process without the library")
        .expect_one_error_line();
    assert!(out.stderr.contains("libshape.so"), "{}", out.stderr);
    target.assert_alive();
}

#[test]
fn a_stripped_executable_is_patched_with_its_debug_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (old, new) = scenario(STATIC_FN.fixture);
    let flavor = Flavor::PIE_O2;
    let full = compile_fixture(&old, dir, flavor);
    let patch = dir.join("static_fn.ulp");
    ulp_build(
        &old,
        &new,
        &patch,
        &flavor.cflags(),
        &["--target", full.to_str().expect("utf-8 path")],
    )
    .expect_code(0, "ulp-build --target");

    // The usual split: the debug file under .build-id/xx/…debug, the program stripped.
    let id = build_id(&full);
    let debug_root = dir.join("debug");
    let debug_file = debug_root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(debug_file.parent().expect("parent")).expect("mkdir");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(&debug_file))
    .expect_code(0, "objcopy --only-keep-debug");
    let stripped = dir.join("stripped-program");
    run(Command::new("strip")
        .arg("--strip-all")
        .arg(&full)
        .arg("-o")
        .arg(&stripped))
    .expect_code(0, "strip");
    let sections = run(Command::new("readelf").arg("-S").arg(&stripped));
    assert!(
        !sections.stdout.contains(".symtab"),
        "the program is stripped"
    );

    let mut target = Target::spawn(&stripped);
    assert_eq!(target.ask(STATIC_FN.query), STATIC_FN.old);
    // Without the debug file the static function cannot be found: refused, unchanged.
    let out = ulp_apply(target.pid(), &[&patch]);
    out.expect_code(2, "ulp-apply to a stripped program without debug file")
        .expect_one_error_line();
    assert!(out.stderr.contains("stripped"), "{}", out.stderr);
    assert_eq!(target.ask(STATIC_FN.query), STATIC_FN.old);

    let out = ulp_apply(
        target.pid(),
        &[
            patch.as_os_str(),
            "--debug-dir".as_ref(),
            debug_root.as_os_str(),
        ],
    );
    out.expect_code(0, "ulp-apply --debug-dir");
    assert_eq!(
        target.ask(STATIC_FN.query),
        STATIC_FN.new,
        "after the patch"
    );
    revert_ok(target.pid());
    assert_eq!(
        target.ask(STATIC_FN.query),
        STATIC_FN.old,
        "after the revert"
    );
    target.assert_alive();
}

/// The GNU build-id of `file`, from `readelf -n`.
fn build_id(file: &Path) -> String {
    let out = run(Command::new("readelf").arg("-n").arg(file));
    out.expect_code(0, "readelf -n");
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(|s| s.trim().to_string())
        .expect("a build-id note")
}

#[test]
fn a_stripped_library_is_patched_with_its_debug_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (exe, lib) = build_shape(dir, &[]);
    // The patch is built against the library with its symbols; the process then loads it stripped.
    let patch = build_shape_patch(dir, &lib);
    let real = dir.join("libshape.so.1");
    let id = build_id(&real);
    let debug_root = dir.join("debug");
    let debug_file = debug_root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(debug_file.parent().expect("parent")).expect("mkdir");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&real)
        .arg(&debug_file))
    .expect_code(0, "objcopy --only-keep-debug");
    run(Command::new("strip").arg("--strip-all").arg(&real)).expect_code(0, "strip");

    let mut target = Target::spawn(&exe);
    assert_eq!(target.ask("6 4"), "area 30 calls 1");
    // margin() is static: without the debug file it cannot be found.
    let out = ulp_apply(target.pid(), &[&patch]);
    out.expect_code(2, "ulp-apply to a stripped library without debug file")
        .expect_one_error_line();
    assert!(out.stderr.contains("stripped"), "{}", out.stderr);
    let out = ulp_apply(
        target.pid(),
        &[
            patch.as_os_str(),
            "--debug-dir".as_ref(),
            debug_root.as_os_str(),
        ],
    );
    out.expect_code(0, "ulp-apply --debug-dir (library)");
    assert_eq!(target.ask("6 4"), "area 82 calls 2", "after the patch");
    revert_ok(target.pid());
    assert_eq!(target.ask("6 4"), "area 30 calls 3", "after the revert");
}

//! A real program's shared library (DESIGN §7, issue 4 item 7): zlib, from the `libz-sys` crate's
//! sources (`src/zlib/`, found with `cargo metadata`; the crate is never built), compiled here as
//! `libz.so.1` with zlib's usual flags plus `-fPIC -g`, and `fixtures/zlib/zpipe.c`, a long-running
//! program linked against it that compresses, decompresses and checksums each line it reads.
//! The patch changes `adler32()` in a copy of zlib's own `adler32.c`, is built with
//! `--target libz.so` (so it names the library and is bound to its build-id), applied to the
//! running program, and reverted.

use std::path::{Path, PathBuf};

use serde_json::Value;
use ulp_tests::{compile, fixtures_dir, package_dir, ulp_apply, ulp_build, Target};

/// What zlib's `configure` uses for the shared library on Linux with gcc (`SFLAGS`); `-g` is added
/// by `compile` (and by `ulp-build`).
const ZLIB_CFLAGS: [&str; 4] = ["-O3", "-fPIC", "-D_LARGEFILE64_SOURCE=1", "-DHAVE_HIDDEN"];

/// Every source file of the shared library.
const ZLIB_UNITS: [&str; 15] = [
    "adler32", "compress", "crc32", "deflate", "gzclose", "gzlib", "gzread", "gzwrite", "infback",
    "inffast", "inflate", "inftrees", "trees", "uncompr", "zutil",
];

/// `src/zlib` of the `libz-sys` package, found with `cargo metadata`.
fn zlib_source_dir() -> PathBuf {
    let dir = package_dir("libz-sys").join("src/zlib");
    assert!(
        dir.join("adler32.c").is_file(),
        "no adler32.c in {}",
        dir.display()
    );
    dir
}

fn cflags(src: &Path) -> Vec<String> {
    let mut flags: Vec<String> = ZLIB_CFLAGS.iter().map(|s| s.to_string()).collect();
    flags.push(format!("-I{}", src.display()));
    flags
}

/// Adler-32 of `bytes` continuing from `start`, as RFC 1950 defines it.
fn adler32(start: u32, bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (start & 0xffff, start >> 16);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn zlib_adler32_is_patched_in_a_running_program() {
    let src = zlib_source_dir();
    let dir = tempfile::Builder::new()
        .prefix("ulp-test-zlib-")
        .tempdir()
        .expect("tempdir");
    let dir = dir.path();

    // libz.so.1 (soname libz.so.1, development link libz.so) and zpipe linked against it.
    let lib = dir.join("libz.so.1");
    let units: Vec<PathBuf> = ZLIB_UNITS
        .iter()
        .map(|u| src.join(format!("{u}.c")))
        .collect();
    compile(
        &units,
        &lib,
        &cflags(&src),
        &["-shared".into(), "-Wl,-soname,libz.so.1".into()],
    );
    std::os::unix::fs::symlink("libz.so.1", dir.join("libz.so")).expect("symlink libz.so");
    let exe = dir.join("zpipe");
    compile(
        &[fixtures_dir().join("zlib/zpipe.c")],
        &exe,
        &[
            "-O2".into(),
            "-fPIE".into(),
            format!("-I{}", src.display()),
            format!("-I{}", fixtures_dir().join("common").display()),
        ],
        &[
            "-pie".into(),
            format!("-L{}", dir.display()),
            "-lz".into(),
            format!("-Wl,-rpath,{}", dir.display()),
        ],
    );

    // OLD is zlib's own adler32.c; NEW makes adler32() (not adler32_z()) flip the lowest bit.
    let original = std::fs::read_to_string(src.join("adler32.c")).expect("read adler32.c");
    let before = "    return adler32_z(adler, buf, len);\n";
    assert_eq!(
        original.matches(before).count(),
        1,
        "adler32() in adler32.c"
    );
    let patched = original.replace(before, "    return adler32_z(adler, buf, len) ^ 1;\n");
    for (sub, text) in [("old", &original), ("new", &patched)] {
        std::fs::create_dir(dir.join(sub)).expect("mkdir");
        std::fs::write(dir.join(sub).join("adler32.c"), text).expect("write adler32.c");
    }
    let patch = dir.join("zlib-adler32.ulp");
    let target_lib = dir.join("libz.so");
    let built = ulp_build(
        &dir.join("old/adler32.c"),
        &dir.join("new/adler32.c"),
        &patch,
        &cflags(&src),
        &[
            "--name",
            "zlib-adler32",
            "--json",
            "--target",
            target_lib.to_str().expect("utf-8 path"),
        ],
    );
    built.expect_code(0, "ulp-build adler32.c --target libz.so");
    let report: Value = serde_json::from_str(&built.stdout).expect("ulp-build --json");
    let functions: Vec<&str> = report["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .map(|f| f["name"].as_str().expect("function name"))
        .collect();
    assert_eq!(functions, ["adler32"], "replaced functions: {report:#}");

    let line = "hello hello hello, zlib!";
    let old_adler = adler32(1, line.as_bytes());
    // Patched, adler32(0, NULL, 0) gives 1 ^ 1 = 0, and the line's checksum continues from there.
    let new_adler = adler32(0, line.as_bytes()) ^ 1;
    let mut zpipe = Target::spawn(&exe);
    let answer = zpipe.ask(line);
    let fields: Vec<&str> = answer.split(' ').collect();
    assert_eq!(fields.len(), 8, "answer: {answer}");
    assert_eq!(fields[3], format!("{old_adler:08x}"), "answer: {answer}");
    assert_eq!(fields[7], "ok", "answer: {answer}");
    let unchanged = |a: &str| {
        let f: Vec<&str> = a.split(' ').collect();
        (f[1].to_string(), f[5].to_string())
    };

    let out = ulp_apply(zpipe.pid(), &[patch.as_os_str(), "--json".as_ref()]);
    out.expect_code(0, "ulp-apply to zpipe");
    let applied: Value = serde_json::from_str(&out.stdout).expect("ulp-apply --json");
    assert!(
        applied["target_object"]
            .as_str()
            .is_some_and(|o| o.ends_with("/libz.so.1")),
        "{applied:#}"
    );
    let after = zpipe.ask(line);
    assert_eq!(
        after.split(' ').nth(3),
        Some(format!("{new_adler:08x}").as_str()),
        "after the patch: {after}"
    );
    // crc32 and the compressed size are untouched; deflate and inflate both use the patched
    // adler32() for the zlib trailer, so the round trip still succeeds.
    assert_eq!(unchanged(&after), unchanged(&answer), "{after}");
    assert!(after.ends_with("roundtrip ok"), "{after}");

    let out = ulp_apply(zpipe.pid(), &["--revert"]);
    out.expect_code(0, "ulp-apply --revert");
    assert_eq!(zpipe.ask(line), answer, "after the revert");
    zpipe.assert_alive();
}

//! A real program no one here wrote (DESIGN §7, issue 3 item 7): the SQLite amalgamation
//! (`sqlite3.c`, one ~270k-line unit, from the `libsqlite3-sys` crate's sources, found with
//! `cargo metadata`) built into `fixtures/sqlite/driver.c`, a host that answers SQL read on stdin.
//! The test changes `absFunc` (the C function behind SQL `abs()`) in a copy, checks that the
//! patch replaces exactly that function, applies it to the running host, and reverts it.
//!
//! Compiling sqlite3.c takes most of this test's time: about 50 s for the target and two more
//! compiles (OLD and NEW, inside ulp-build) on a 2-core machine; the target is compiled while
//! ulp-build runs.

use std::path::PathBuf;
use std::thread;

use ulp_tests::{apply_ok, compile, fixtures_dir, package_dir, revert_ok, ulp_build, Target};

/// SQLite's usual flags for an embedded, single-threaded build (the target and the patch).
const SQLITE_CFLAGS: [&str; 5] = [
    "-O2",
    "-fPIE",
    "-DSQLITE_THREADSAFE=0",
    "-DSQLITE_OMIT_LOAD_EXTENSION",
    "-DSQLITE_DEFAULT_MEMSTATUS=0",
];

/// The directory holding `sqlite3.c` in the `libsqlite3-sys` package, found with `cargo metadata`.
fn sqlite_source_dir() -> PathBuf {
    let dir = package_dir("libsqlite3-sys").join("sqlite3");
    assert!(
        dir.join("sqlite3.c").is_file(),
        "no sqlite3.c in {}",
        dir.display()
    );
    dir
}

fn cflags() -> Vec<String> {
    SQLITE_CFLAGS.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sqlite_abs_is_patched_in_a_running_host() {
    let src = sqlite_source_dir();
    let dir = tempfile::Builder::new()
        .prefix("ulp-test-sqlite-")
        .tempdir()
        .expect("tempdir");
    let dir = dir.path();

    // OLD is SQLite's own sqlite3.c; NEW makes abs() of an integer return |x| + 1.
    let original = std::fs::read_to_string(src.join("sqlite3.c")).expect("read sqlite3.c");
    let before = "        iVal = -iVal;\n      }\n      sqlite3_result_int64(context, iVal);";
    assert_eq!(
        original.matches(before).count(),
        1,
        "absFunc's integer case in sqlite3.c"
    );
    let after = before.replace("(context, iVal);", "(context, iVal + 1);");
    let patched = original.replace(before, &after);
    for (sub, text) in [("old", &original), ("new", &patched)] {
        std::fs::create_dir(dir.join(sub)).expect("mkdir");
        std::fs::write(dir.join(sub).join("sqlite3.c"), text).expect("write sqlite3.c");
    }

    // The target (from the crate's own sqlite3.c) and the patch, built at the same time.
    let patch = dir.join("sqlite-abs.ulp");
    let exe = dir.join("sqlite-host");
    let built = thread::scope(|scope| {
        scope.spawn(|| {
            let mut flags = cflags();
            flags.push(format!("-I{}", src.display()));
            flags.push(format!("-I{}", fixtures_dir().join("common").display()));
            compile(
                &[
                    src.join("sqlite3.c"),
                    fixtures_dir().join("sqlite/driver.c"),
                ],
                &exe,
                &flags,
                &["-pie".into(), "-lm".into()],
            );
        });
        ulp_build(
            &dir.join("old/sqlite3.c"),
            &dir.join("new/sqlite3.c"),
            &patch,
            &cflags(),
            &["--name", "sqlite-abs", "--json"],
        )
    });
    built.expect_code(0, "ulp-build sqlite3.c");

    // Exactly absFunc: it is only reached through SQLite's table of built-in functions, so no
    // function inlines it, and nothing else changed.
    let report: serde_json::Value = serde_json::from_str(&built.stdout).expect("ulp-build --json");
    let functions: Vec<&str> = report["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .map(|f| f["name"].as_str().expect("function name"))
        .collect();
    assert_eq!(functions, ["absFunc"], "replaced functions: {report:#}");
    for f in report["functions"].as_array().unwrap() {
        let reason = f["reason"].as_str().unwrap_or("");
        assert!(!reason.is_empty(), "every function is explained: {f}");
    }
    for key in ["new_functions", "new_data"] {
        assert_eq!(
            report[key].as_array().map(Vec::len),
            Some(0),
            "{key}: {report:#}"
        );
    }

    let mut host = Target::spawn(&exe);
    let query = "SELECT abs(-5), abs(7), abs(-2.5), upper('x');";
    assert_eq!(host.ask(query), "5|7|2.5|X");
    assert_eq!(
        host.ask("CREATE TABLE t(v); INSERT INTO t VALUES (-3), (4);"),
        ""
    );
    apply_ok(host.pid(), &patch);
    assert_eq!(host.ask(query), "6|8|2.5|X", "after the patch");
    assert_eq!(
        host.ask("SELECT sum(abs(v)) FROM t;"),
        "9",
        "the table survived"
    );
    revert_ok(host.pid());
    assert_eq!(host.ask(query), "5|7|2.5|X", "after the revert");
    assert_eq!(host.ask("SELECT sum(abs(v)) FROM t;"), "7");
    host.assert_alive();
}

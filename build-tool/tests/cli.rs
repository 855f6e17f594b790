//! The `ulp-build` command-line contract: exit codes, one-line errors, `--json`, deterministic output.

use std::path::Path;
use std::process::{Command, Output};

const OLD: &str = r#"
#include <stdio.h>
int scale = 3;
__attribute__((noipa)) int compute(int x) { static int calls; calls++; return x * scale + calls; }
int main(void) { printf("%d\n", compute(2)); return 0; }
"#;

fn ulp_build(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulp-build"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn setup(new: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.c"), OLD).unwrap();
    std::fs::write(dir.path().join("new.c"), new).unwrap();
    dir
}

#[test]
fn changed_function_writes_a_patch_and_summarizes_it_as_json() {
    let dir = setup(&OLD.replace("x * scale + calls", "x * scale + calls + 100"));
    for cflags in ["-O0 -fno-pie", "-O2 -fPIE"] {
        let out = ulp_build(
            dir.path(),
            &[
                "old.c", "new.c", "-o", "fix.ulp", "--cflags", cflags, "--json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{cflags}: {}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["functions"][0]["name"], "compute");
        assert_eq!(summary["name"], "fix");
        assert_eq!(summary["output"], "fix.ulp");
        assert!(!summary["id"].as_str().unwrap().is_empty());
        let refs: Vec<&str> = summary["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            refs.contains(&"scale") && refs.contains(&"calls.0"),
            "{refs:?}"
        );
        let patch =
            ulp_runtime::read_patch(&std::fs::read(dir.path().join("fix.ulp")).unwrap()).unwrap();
        assert_eq!(patch.meta.functions[0].target.name, "compute");
    }
}

#[test]
fn same_inputs_give_byte_identical_patches() {
    let dir = setup(&OLD.replace("x * scale + calls", "x * scale + calls + 100"));
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    for out in ["a/fix.ulp", "b/fix.ulp"] {
        let run = ulp_build(
            dir.path(),
            &["old.c", "new.c", "-o", out, "--cflags", "-O2"],
        );
        assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    }
    assert_eq!(
        std::fs::read(dir.path().join("a/fix.ulp")).unwrap(),
        std::fs::read(dir.path().join("b/fix.ulp")).unwrap()
    );
}

#[test]
fn unchanged_source_exits_3() {
    let dir = setup(OLD);
    let out = ulp_build(dir.path(), &["old.c", "new.c", "-o", "fix.ulp"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out).trim(),
        "ulp-build: no change between OLD and NEW"
    );
    assert!(!dir.path().join("fix.ulp").exists());
}

#[test]
fn changed_initializer_exits_2_naming_the_global() {
    let dir = setup(&OLD.replace("scale = 3", "scale = 4"));
    let out = ulp_build(dir.path(), &["old.c", "new.c", "-o", "fix.ulp"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "error: cannot live-patch: initializer of global 'scale' changed"
    );
}

#[test]
fn compile_error_exits_1_with_one_error_line_first() {
    let dir = setup("int broken( {\n");
    let out = ulp_build(dir.path(), &["old.c", "new.c", "-o", "fix.ulp"]);
    assert_eq!(out.status.code(), Some(1));
    let first = stderr(&out).lines().next().unwrap().to_string();
    assert!(
        first.starts_with("error: compiling new.c failed: new.c:1"),
        "{first}"
    );
}

#[test]
fn bad_arguments_exit_1_with_one_line() {
    let dir = setup(OLD);
    let out = ulp_build(dir.path(), &["old.c"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = ulp_build(
        dir.path(),
        &["old.c", "new.c", "-o", "x.ulp", "--cc", "no-such-cc"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-such-cc"));
}

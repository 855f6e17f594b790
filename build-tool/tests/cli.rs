//! The `ulp-build` command-line contract: exit codes, one-line errors, `--json`, deterministic output.

use std::path::Path;
use std::process::{Command, Output, Stdio};

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
        "ulp-build: no change between old.c and new.c"
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
        "error: cannot live-patch: new.c:3: initializer of global 'scale' changed"
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

fn ulp_build_with_stdout(dir: &Path, args: &[&str], stdout: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulp-build"))
        .current_dir(dir)
        .args(args)
        .stdout(stdout)
        .output()
        .unwrap()
}

const CHANGED: [&str; 4] = ["old.c", "new.c", "-o", "fix.ulp"];

#[test]
fn stdout_write_errors_do_not_panic() {
    let dir = setup(&OLD.replace("x * scale + calls", "x * scale + calls + 100"));
    for json in [false, true] {
        let mut args = CHANGED.to_vec();
        if json {
            args.push("--json");
        }
        // A full device: every write fails.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = ulp_build_with_stdout(dir.path(), &args, full.into());
        assert_eq!(out.status.code(), Some(0), "{json}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        assert!(dir.path().join("fix.ulp").exists());
        // A pipe whose reader went away (`| head -c 1`).
        let mut child = Command::new(env!("CARGO_BIN_EXE_ulp-build"))
            .current_dir(dir.path())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{json}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // No change, with --json, to a full device.
    let dir = setup(OLD);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = ulp_build_with_stdout(
        dir.path(),
        &["old.c", "new.c", "-o", "fix.ulp", "--json"],
        full.into(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn lto_objects_are_an_error_naming_the_file() {
    let dir = setup(&OLD.replace("x * scale + calls", "x * scale + calls + 100"));
    for cflags in ["-flto", "-O2 -flto -ffat-lto-objects"] {
        let out = ulp_build(
            dir.path(),
            &["old.c", "new.c", "-o", "fix.ulp", "--cflags", cflags],
        );
        assert_eq!(out.status.code(), Some(1), "{cflags}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim_end(),
            "error: old.c was compiled to LTO bytecode (-flto), which has no machine code to \
             compare; build the patch without -flto",
            "{cflags}"
        );
        assert!(!dir.path().join("fix.ulp").exists());
    }
}

#[test]
fn patch_that_replaces_no_function_is_refused() {
    let dir = setup("int g(void) { return 2; }\nint f(void) { return g() + 1; }\n");
    std::fs::write(dir.path().join("old.c"), "").unwrap();
    for cflags in ["-O0", "-O2"] {
        let out = ulp_build(
            dir.path(),
            &["old.c", "new.c", "-o", "fix.ulp", "--cflags", cflags],
        );
        assert_eq!(out.status.code(), Some(2), "{cflags}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim_end(),
            "error: cannot live-patch: new.c:2: the change replaces no function of the running program \
             (it only adds f, g)",
            "{cflags}"
        );
        assert!(!dir.path().join("fix.ulp").exists());
    }
}

const WITH_GONE: &str = r#"
#include <stdio.h>
__attribute__((noipa)) int compute(int x) { return x * 3 + 1; }
__attribute__((noipa)) int gone(int x) { return x - 7; }
int main(void) { printf("%d\n", compute(2)); return 0; }
"#;

const GONE_WARNING: &str = "warning: function 'gone' was removed in NEW; the running program \
                            keeps it (callers that changed no longer call it)";

#[test]
fn removed_functions_warn_and_removal_alone_is_refused() {
    let without_gone = WITH_GONE.replace(
        "__attribute__((noipa)) int gone(int x) { return x - 7; }\n",
        "",
    );
    // Removal is the only difference.
    let dir = setup(&without_gone);
    std::fs::write(dir.path().join("old.c"), WITH_GONE).unwrap();
    let out = ulp_build(dir.path(), &CHANGED);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        format!(
            "{GONE_WARNING}\nerror: cannot live-patch: old.c:4: the only change removes functions (gone); \
             a live patch cannot remove code"
        )
    );
    assert!(!dir.path().join("fix.ulp").exists());
    // Everything removed: not "no change" either.
    std::fs::write(dir.path().join("new.c"), "").unwrap();
    let out = ulp_build(dir.path(), &CHANGED);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).ends_with(
            "error: cannot live-patch: old.c:3: the only change removes functions (compute, gone, main); \
             a live patch cannot remove code\n"
        ),
        "{}",
        stderr(&out)
    );
    // Removal next to a real change: the patch is written, with a warning.
    std::fs::write(
        dir.path().join("new.c"),
        without_gone.replace("x * 3 + 1", "x * 3 + 2"),
    )
    .unwrap();
    let out = ulp_build(dir.path(), &["old.c", "new.c", "-o", "fix.ulp", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim_end(), GONE_WARNING);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["removed_functions"], serde_json::json!(["gone"]));
    assert_eq!(summary["functions"][0]["name"], "compute");
}

#[test]
fn output_that_is_an_input_file_is_refused() {
    let dir = setup(&OLD.replace("x * scale + calls", "x * scale + calls + 100"));
    for (output, input) in [("./old.c", "old.c"), ("new.c", "new.c")] {
        let out = ulp_build(dir.path(), &["old.c", "new.c", "-o", output]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(
            stderr(&out).trim_end(),
            format!("error: output {output} is the input file {input}")
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("old.c")).unwrap(),
        OLD
    );
}

#[test]
fn inputs_that_are_not_files_and_compilers_without_output_are_named() {
    let dir = setup(OLD);
    for input in ["/tmp", "/dev/null"] {
        let out = ulp_build(dir.path(), &[input, "new.c", "-o", "fix.ulp"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out).trim_end(),
            format!("error: {input} is not a regular file")
        );
    }
    let out = ulp_build(dir.path(), &["missing.c", "new.c", "-o", "fix.ulp"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).trim_end(), "error: missing.c: no such file");
    // A "compiler" that succeeds without writing anything.
    let fake = dir.path().join("fake-cc");
    std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fake = fake.display().to_string();
    let out = ulp_build(
        dir.path(),
        &["old.c", "new.c", "-o", "fix.ulp", "--cc", &fake],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end(),
        format!("error: compiler {fake} produced no object file for old.c")
    );
}

#[test]
fn name_with_control_characters_is_refused() {
    let dir = setup(&OLD.replace("x * scale + calls", "x * scale + calls + 100"));
    for name in ["a\nb", "red\x1b[31m", "del\x7f", "tab\t"] {
        let out = ulp_build(
            dir.path(),
            &["old.c", "new.c", "-o", "fix.ulp", "--name", name],
        );
        assert_eq!(out.status.code(), Some(1), "{name:?}");
        assert_eq!(
            stderr(&out).trim_end(),
            "error: --name must be printable text"
        );
        assert!(!dir.path().join("fix.ulp").exists());
    }
    let out = ulp_build(
        dir.path(),
        &["old.c", "new.c", "-o", "fix.ulp", "--name", "fix é-2"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn terminated_build_leaves_no_compiler_running_and_no_temporary_files() {
    // A source big enough that the compilers are still running when SIGTERM arrives.
    let mut big = String::new();
    for i in 0..20_000 {
        big += &format!("int f{i}(int x) {{ return x * {i} + {}; }}\n", i % 7);
    }
    let dir = setup(&big);
    std::fs::write(dir.path().join("old.c"), &big).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ulp-build"))
        .args(["old.c", "new.c", "-o", "fix.ulp", "--cflags", "-O2"])
        .current_dir(dir.path())
        .env("TMPDIR", &tmp)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a compiler has started, then interrupt.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(20)
        && compilers_writing_into(&tmp) == 0
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(compilers_writing_into(&tmp) > 0, "no compiler started");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    // Killed with SIGKILL, they are gone within moments.
    let killed = std::time::Instant::now();
    while compilers_writing_into(&tmp) > 0 && killed.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(compilers_writing_into(&tmp), 0, "compilers left running");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temporary files left"
    );
}

/// Processes whose command line names a path under `dir`.
fn compilers_writing_into(dir: &std::path::Path) -> usize {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .count()
}

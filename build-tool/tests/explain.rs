//! Source lines in refusals and `--explain`/`--json` explanations, with real compilers on real C.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn ulp_build(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulp-build"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn setup(old: &str, new: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.c"), old).unwrap();
    std::fs::write(dir.path().join("new.c"), new).unwrap();
    dir
}

/// gcc, and clang when installed.
fn compilers() -> Vec<&'static str> {
    let mut list = vec!["gcc"];
    if which::which("clang").is_ok() {
        list.push("clang");
    }
    list
}

/// Run `ulp-build old.c new.c` with `cc` and `cflags` plus `extra` flags.
fn build(dir: &Path, cc: &str, cflags: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "old.c", "new.c", "-o", "fix.ulp", "--cc", cc, "--cflags", cflags,
    ];
    args.extend_from_slice(extra);
    ulp_build(dir, &args)
}

/// The 1-based line of the first line of `source` containing `needle`.
fn line_of(source: &str, needle: &str) -> u64 {
    source.lines().position(|l| l.contains(needle)).unwrap() as u64 + 1
}

const GLOBALS: &str = r#"#include <stdio.h>

int other = 1;
/* the limit */
int limit = 10;

__attribute__((noipa)) int check(int x) { return x < limit; }
int main(void) { printf("%d\n", check(3) + other); return 0; }
"#;

#[test]
fn changed_initializer_is_refused_with_its_source_line() {
    let new = GLOBALS.replace("int limit = 10;", "int limit = 12;");
    let line = line_of(&new, "int limit");
    let dir = setup(GLOBALS, &new);
    for cc in compilers() {
        for cflags in ["-O0", "-O2"] {
            let out = build(dir.path(), cc, cflags, &[]);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cc} {cflags}: {err}");
            assert!(
                err.contains(&format!(
                    "error: cannot live-patch: new.c:{line}: initializer of global 'limit' changed"
                )),
                "{cc} {cflags}: {err}"
            );
            // --json: the same as an object on stdout.
            let out = build(dir.path(), cc, cflags, &["--json"]);
            assert_eq!(out.status.code(), Some(2));
            let report: Value = serde_json::from_slice(&out.stdout).unwrap();
            let refused = &report["refused"][0];
            assert_eq!(refused["symbol"], "limit", "{cc} {cflags}: {report}");
            assert_eq!(refused["file"], "new.c");
            assert_eq!(refused["line"], line);
            assert!(refused["reason"].as_str().unwrap().contains("initializer"));
        }
    }
}

#[test]
fn function_too_small_is_refused_with_the_line_of_the_change() {
    let old = "/* tiny */\n\nint tiny(void)\n{\n    return 0;\n}\n";
    let new = old.replace("return 0;", "return 1;");
    let dir = setup(old, &new);
    let out = build(dir.path(), "gcc", "-O2 -fcf-protection=none", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("'tiny'"), "{err}");
    let line = line_of(&new, "return 1;");
    assert!(err.contains(&format!("new.c:{line}: ")), "{err}");
}

#[test]
fn static_made_global_names_the_line_of_the_variable() {
    let old = "static int level = 1;\n\nint get(void) { return level; }\nvoid set(int v) { level = v; }\n";
    let new = "int zz;\n\nint level = 1;\n\nint get(void) { return level; }\nvoid set(int v) { level = v; }\n";
    let dir = setup(old, new);
    for cc in compilers() {
        let out = build(dir.path(), cc, "-O2", &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cc}: {err}");
        assert!(
            err.contains("new.c:3: static 'level' made global"),
            "{cc}: {err}"
        );
    }
}

// clang ignores `noipa`; `noinline` and an argument from argc keep its calls and arithmetic apart.
const BODY: &str = r#"#include <stdio.h>
#ifdef __clang__
#define KEEP __attribute__((noinline))
#else
#define KEEP __attribute__((noipa))
#endif
KEEP int helper_old(int x) { return x - 1; }
KEEP int helper(int x) { return x + 1; }

KEEP int compute(int x)
{
    int y = x * 2;
    y = y + 1000;
    return helper_old(y);
}

int main(int argc, char **argv) { printf("%d %s\n", compute(argc), argv[0]); return 0; }
"#;

#[test]
fn explain_shows_the_changed_instruction_and_its_line() {
    let new = BODY.replace("y + 1000", "y + 2000");
    let line = line_of(&new, "y + 2000");
    let dir = setup(BODY, &new);
    for cc in compilers() {
        for cflags in ["-O0", "-O2"] {
            let out = build(dir.path(), cc, cflags, &["--explain"]);
            let stdout = text(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{cc} {cflags}: {}",
                text(&out.stderr)
            );
            let explanation = stdout
                .split("replaced compute")
                .nth(1)
                .unwrap_or_else(|| panic!("{cc} {cflags}: no explanation of compute: {stdout}"));
            // At -O0 the line is exact; at -O2 the changed instruction may be merged with the next
            // statement's, and the line table names a line of the function's body.
            let lines = if cflags == "-O0" {
                line..=line
            } else {
                line_of(&new, "int y = x * 2")..=line_of(&new, "return helper_old")
            };
            assert!(
                explanation.contains("bytes differ at +0x")
                    && lines
                        .clone()
                        .any(|l| explanation.contains(&format!("(new.c:{l})"))),
                "{cc} {cflags}: {stdout}"
            );
            // The diff removes the instruction with 1000 (0x3e8) and adds the one with 2000 (0x7d0);
            // the call is shown by name, unchanged.
            let lower = explanation.to_lowercase();
            assert!(
                lower
                    .lines()
                    .any(|l| l.trim_start().starts_with('+') && l.contains("0x7d0")),
                "{cc} {cflags}: {stdout}"
            );
            assert!(
                lower
                    .lines()
                    .any(|l| l.trim_start().starts_with('-') && l.contains("0x3e8")),
                "{cc} {cflags}: {stdout}"
            );
            assert!(
                !lower
                    .lines()
                    .any(|l| l.trim_start().starts_with(['+', '-']) && l.contains("helper_old")),
                "{cc} {cflags}: {stdout}"
            );
        }
    }
}

#[test]
fn explain_names_a_changed_relocation_target() {
    let new = BODY.replace("return helper_old(y);", "return helper(y);");
    let dir = setup(BODY, &new);
    for cc in compilers() {
        let out = build(dir.path(), cc, "-O0", &["--explain"]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{cc}: {}", text(&out.stderr));
        assert!(
            stdout.contains("now refers to 'helper' (was 'helper_old')"),
            "{cc}: {stdout}"
        );
        assert!(
            stdout.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with('+') && l.contains("call") && l.contains("helper")
            }),
            "{cc}: {stdout}"
        );
        // --json carries the same reason.
        let out = build(dir.path(), cc, "-O0", &["--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let compute = report["explanations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "compute")
            .unwrap_or_else(|| panic!("{cc}: {report}"));
        let reason = compute["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "relocation_changed")
            .unwrap_or_else(|| panic!("{cc}: {compute}"));
        assert_eq!(reason["now"], "'helper'");
        assert_eq!(reason["was"], "'helper_old'");
        assert!(compute["diff"].as_str().unwrap().contains("helper"));
    }
}

const PARSER: &str = r#"#include <string.h>

int limit = 10;

static int check_len(const char *s)
{
    return strlen(s) < (unsigned)limit + 1;
}

__attribute__((noinline)) int parse(const char *s)
{
    if (!check_len(s))
        return -1;
    return s[0] * 3;
}
"#;

#[test]
fn inlined_callee_change_explains_the_caller() {
    let new = PARSER.replace("(unsigned)limit + 1", "(unsigned)limit + 2");
    let dir = setup(PARSER, &new);
    for cc in compilers() {
        let out = build(dir.path(), cc, "-O2", &["--explain"]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{cc}: {}", text(&out.stderr));
        let parse = stdout
            .split("replaced parse")
            .nth(1)
            .unwrap_or_else(|| panic!("{cc}: {stdout}"));
        assert!(
            parse.contains("`parse` is included because `check_len`")
                && parse.contains("is inlined into it"),
            "{cc}: {stdout}"
        );
        let out = build(dir.path(), cc, "-O2", &["--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let parse = report["explanations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "parse")
            .unwrap_or_else(|| panic!("{cc}: {report}"));
        assert_eq!(
            parse["inlined_changed_callees"],
            serde_json::json!(["check_len"])
        );
        assert_eq!(parse["file"], "new.c");
        // Its own source did not change, so the inlined callee is the first reason.
        assert_eq!(
            parse["reasons"][0]["kind"], "inlined_callee_changed",
            "{cc}: {parse}"
        );
        assert_eq!(parse["reasons"][0]["callee"], "check_len");
    }
}

#[test]
fn own_change_is_not_blamed_on_inlined_callees() {
    let new = PARSER.replace("s[0] * 3", "s[0] * 5");
    let dir = setup(PARSER, &new);
    for cc in compilers() {
        let out = build(dir.path(), cc, "-O2", &["--json"]);
        assert_eq!(out.status.code(), Some(0), "{cc}: {}", text(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let parse = report["explanations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "parse")
            .unwrap_or_else(|| panic!("{cc}: {report}"));
        assert_eq!(
            parse["inlined_changed_callees"],
            serde_json::json!([]),
            "{cc}: {parse}"
        );
        assert_eq!(parse["reasons"][0]["kind"], "bytes_differ", "{cc}: {parse}");
        assert_eq!(parse["reasons"][0]["line"], line_of(&new, "s[0] * 5"));
    }
}

#[test]
fn new_functions_are_explained_as_new() {
    let new = BODY
        .replace(
            "KEEP int compute",
            "KEEP int extra(int x) { return x * 7; }\n\nKEEP int compute",
        )
        .replace("return helper_old(y);", "return extra(y);");
    let dir = setup(BODY, &new);
    let out = build(dir.path(), "gcc", "-O2", &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let extra = report["explanations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "extra")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(extra["status"], "new");
    assert_eq!(extra["reasons"][0]["kind"], "new");
    assert_eq!(extra["line"], line_of(&new, "int extra"));
}

const LOOP: &str = r#"#include <ctype.h>

void upper(char *out, const char *in, int n)
{
    int i;
    for (i = 0; i < n; i++) {
        if (in[i] == 0)
            break;
        out[i] = (char)toupper(in[i]);
    }
}
"#;

#[test]
fn explain_names_the_changed_line_not_a_branch_that_moved() {
    // The inserted instruction lengthens the loop: branches before it get other displacements, and
    // the first differing *byte* is one of them. The explanation names the changed statement.
    let new = LOOP.replace("(char)toupper(in[i]);", "(char)toupper(in[i]) ^ 1;");
    let line = line_of(&new, "toupper");
    let dir = setup(LOOP, &new);
    for cc in compilers() {
        for cflags in ["-O0", "-O2"] {
            let out = build(dir.path(), cc, cflags, &["--json"]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{cc} {cflags}: {}",
                text(&out.stderr)
            );
            let report: Value = serde_json::from_slice(&out.stdout).unwrap();
            let upper = &report["explanations"][0];
            assert_eq!(upper["name"], "upper");
            assert_eq!(
                upper["reasons"][0]["kind"], "bytes_differ",
                "{cc} {cflags}: {upper}"
            );
            assert_eq!(upper["reasons"][0]["line"], line, "{cc} {cflags}: {upper}");
            assert!(
                upper["diff"].as_str().unwrap().contains("+    xor"),
                "{cc} {cflags}: {upper}"
            );
        }
    }
}

//! Inputs for pipelines, with real gcc on real C: several translation units (`--pair`), distro mode
//! (`--source/--diff/--compile-commands`), `--target BIN`, and byte-identical output.

use std::path::Path;
use std::process::{Command, Output};

use object::Object;
use ulp_runtime::meta::Binding;
use ulp_runtime::{read_patch, Patch};

const A_OLD: &str = "static int helper(void) { return 1; }\n\
                     int a_value(void) { return helper() + 10; }\n";
const A_NEW: &str = "static int helper(void) { return 2; }\n\
                     int a_value(void) { return helper() + 10; }\n";
const B_OLD: &str = "static int helper(void) { return 100; }\n\
                     int b_value(void) { return helper() + 20; }\n";
const B_NEW: &str = "static int helper(void) { return 200; }\n\
                     int b_value(void) { return helper() + 20; }\n";
const MAIN: &str = "int a_value(void);\nint b_value(void);\n\
                    int main(void) { return a_value() + b_value() == 0; }\n";

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

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `old/a.c old/b.c new/a.c new/b.c` (NEW's files as given) and `main.c`.
fn setup(a_new: &str, b_new: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "old/a.c", A_OLD);
    write(dir.path(), "old/b.c", B_OLD);
    write(dir.path(), "new/a.c", a_new);
    write(dir.path(), "new/b.c", b_new);
    write(dir.path(), "main.c", MAIN);
    dir
}

fn read(path: &Path) -> Patch {
    read_patch(&std::fs::read(path).unwrap()).unwrap()
}

/// `(name, file)` of every replaced function.
fn replaced(patch: &Patch) -> Vec<(String, Option<String>)> {
    patch
        .meta
        .functions
        .iter()
        .map(|f| (f.target.name.clone(), f.target.file.clone()))
        .collect()
}

fn helper_in(file: &str) -> (String, Option<String>) {
    ("helper".to_string(), Some(file.to_string()))
}

const PAIRS: [&str; 4] = ["--pair", "old/a.c:new/a.c", "--pair", "old/b.c:new/b.c"];

#[test]
fn same_named_statics_in_two_units_stay_distinct() {
    let dir = setup(A_OLD, B_NEW);
    let out = ulp_build(dir.path(), &[&PAIRS[..], &["-o", "fix.ulp"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let patch = read(&dir.path().join("fix.ulp"));
    assert_eq!(replaced(&patch), vec![helper_in("b.c")]);
    assert_eq!(patch.meta.functions[0].target.binding, Binding::Local);
}

#[test]
fn two_changed_units_make_one_patch_with_unique_symbols() {
    let dir = setup(A_NEW, B_NEW);
    // The positional pair and --pair mix: a.c positional, b.c as a pair.
    let out = ulp_build(
        dir.path(),
        &[
            "old/a.c",
            "new/a.c",
            "--pair",
            "old/b.c:new/b.c",
            "-o",
            "fix.ulp",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let patch = read(&dir.path().join("fix.ulp"));
    assert_eq!(replaced(&patch), vec![helper_in("a.c"), helper_in("b.c")]);
    let replacements: Vec<&str> = patch
        .meta
        .functions
        .iter()
        .map(|f| f.replacement.as_str())
        .collect();
    assert_eq!(replacements, ["helper", "helper@b.c"]);
}

#[test]
fn unchanged_units_exit_3_and_refusals_of_all_units_are_reported() {
    let dir = setup(A_OLD, B_OLD);
    let out = ulp_build(dir.path(), &[&PAIRS[..], &["-o", "fix.ulp"]].concat());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!dir.path().join("fix.ulp").exists());

    let a = "int a_data = 1;\nstatic int helper(void) { return 1; }\n\
             int a_value(void) { return helper() + a_data; }\n";
    let b = "int b_data = 1;\nstatic int helper(void) { return 100; }\n\
             int b_value(void) { return helper() + b_data; }\n";
    write(dir.path(), "old/a.c", a);
    write(
        dir.path(),
        "new/a.c",
        &a.replace("a_data = 1", "a_data = 2"),
    );
    write(dir.path(), "old/b.c", b);
    write(
        dir.path(),
        "new/b.c",
        &b.replace("b_data = 1", "b_data = 2"),
    );
    let out = ulp_build(dir.path(), &[&PAIRS[..], &["-o", "fix.ulp"]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("'a_data'") && err.contains("'b_data'"),
        "{err}"
    );
}

#[test]
fn several_pairs_give_byte_identical_patches() {
    let dir = setup(A_NEW, B_NEW);
    let first = ulp_build(dir.path(), &[&PAIRS[..], &["-o", "one.ulp"]].concat());
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let second = ulp_build(
        dir.path(),
        &[&PAIRS[..], &["-o", "two.ulp"], &["--name", "one"]].concat(),
    );
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(
        std::fs::read(dir.path().join("one.ulp")).unwrap(),
        std::fs::read(dir.path().join("two.ulp")).unwrap()
    );
}

/// A tiny tree `src/` (a.c, b.c, h.h included by a.c, a compilation database with one `command`
/// and one `arguments` entry).
fn distro_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(
        &src,
        "a.c",
        &format!("#include \"h.h\"\n{A_OLD}int a_limit(void) {{ return LIMIT; }}\n"),
    );
    write(&src, "h.h", "#define LIMIT 5\n");
    write(&src, "b.c", B_OLD);
    let commands = serde_json_text(&src);
    std::fs::write(dir.path().join("compile_commands.json"), commands).unwrap();
    dir
}

fn serde_json_text(src: &Path) -> String {
    let src = src.display();
    format!(
        r#"[
  {{ "directory": "{src}", "file": "a.c",
     "command": "gcc -O0 -MD -MF a.d -c a.c -o a.o" }},
  {{ "directory": "{src}", "file": "{src}/b.c",
     "arguments": ["gcc", "-O0", "-I{src}", "-c", "{src}/b.c", "-o", "b.o"] }}
]"#
    )
}

const B_DIFF: &str = "--- a/b.c\n+++ b/b.c\n@@ -1,2 +1,2 @@\n\
                      -static int helper(void) { return 100; }\n\
                      +static int helper(void) { return 200; }\n \
                      int b_value(void) { return helper() + 20; }\n";

fn distro(dir: &Path, diff: &str, out: &str) -> Output {
    std::fs::write(dir.join("fix.patch"), diff).unwrap();
    ulp_build(
        dir,
        &[
            "--source",
            "src",
            "--diff",
            "fix.patch",
            "--compile-commands",
            "compile_commands.json",
            "-o",
            out,
        ],
    )
}

#[test]
fn distro_mode_rebuilds_only_the_touched_unit() {
    let dir = distro_tree();
    let out = distro(dir.path(), B_DIFF, "fix.ulp");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        replaced(&read(&dir.path().join("fix.ulp"))),
        vec![helper_in("b.c")]
    );
    // The tree itself is untouched.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("src/b.c")).unwrap(),
        B_OLD
    );
    assert!(!dir.path().join("src/a.d").exists());

    // Same inputs, byte-identical output.
    let first = std::fs::read(dir.path().join("fix.ulp")).unwrap();
    let again = distro(dir.path(), B_DIFF, "fix.ulp");
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(std::fs::read(dir.path().join("fix.ulp")).unwrap(), first);
}

#[test]
fn distro_mode_header_change_rebuilds_the_units_that_include_it() {
    let dir = distro_tree();
    let diff = "--- src/h.h\n+++ src/h.h\n@@ -1 +1 @@\n-#define LIMIT 5\n+#define LIMIT 6\n";
    // Paths relative to the tree's parent: -p level detected as 1.
    let out = distro(dir.path(), diff, "fix.ulp");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let patch = read(&dir.path().join("fix.ulp"));
    assert_eq!(replaced(&patch), vec![("a_limit".to_string(), None)]);
}

#[test]
fn distro_mode_diff_that_does_not_apply_is_one_error_line() {
    let dir = distro_tree();
    let out = distro(
        dir.path(),
        &B_DIFF.replace("return 100", "return 7"),
        "fix.ulp",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: fix.patch does not apply"), "{err}");

    let other = "--- /dev/null\n+++ b/c.c\n@@ -0,0 +1 @@\n+int c;\n";
    let out = distro(dir.path(), other, "fix.ulp");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("c.c") && err.contains("compile_commands.json"),
        "{err}"
    );
}

fn link(dir: &Path, sources: &[&str], output: &str) {
    let status = Command::new("gcc")
        .current_dir(dir)
        .args(["-ffunction-sections", "-fdata-sections", "-g"])
        .args(sources)
        .args(["-o", output])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn target_records_the_build_id_and_checks_the_binary() {
    let dir = setup(A_OLD, B_NEW);
    link(dir.path(), &["old/a.c", "old/b.c", "main.c"], "prog");
    let args = [&PAIRS[..], &["-o", "fix.ulp", "--target", "prog"]].concat();
    let out = ulp_build(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let patch = read(&dir.path().join("fix.ulp"));
    let bytes = std::fs::read(dir.path().join("prog")).unwrap();
    let id = object::File::parse(&*bytes)
        .unwrap()
        .build_id()
        .unwrap()
        .unwrap();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(patch.meta.target.build_id.as_deref(), Some(hex.as_str()));
    assert_eq!(patch.meta.target.object, None);

    // A binary without b.c's helper.
    write(dir.path(), "other.c", "int b_value(void) { return 20; }\n");
    link(dir.path(), &["old/a.c", "other.c", "main.c"], "other");
    let args = [&PAIRS[..], &["-o", "bad.ulp", "--target", "other"]].concat();
    let out = ulp_build(dir.path(), &args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("'helper' (b.c)"), "{}", stderr(&out));
    assert!(!dir.path().join("bad.ulp").exists());

    // Built with other flags: the function has another size.
    let status = Command::new("gcc")
        .current_dir(dir.path())
        .args(["-O2", "-g", "old/a.c", "old/b.c", "main.c", "-o", "opt"])
        .status()
        .unwrap();
    assert!(status.success());
    let args = [&PAIRS[..], &["-o", "bad.ulp", "--target", "opt"]].concat();
    let out = ulp_build(dir.path(), &args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn file_macro_names_old_so_new_in_another_directory_is_no_change_there() {
    let b_old = "#include <assert.h>\nstatic int helper(void) { return 100; }\n\
                 int b_value(int x) { assert(x); return helper() + 20; }\n";
    let dir = setup(A_OLD, &b_old.replace("100", "200"));
    write(dir.path(), "old/b.c", b_old);
    let out = ulp_build(dir.path(), &["old/b.c", "new/b.c", "-o", "fix.ulp"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        replaced(&read(&dir.path().join("fix.ulp"))),
        vec![helper_in("b.c")]
    );
}

#[test]
fn target_shared_library_records_its_file_name() {
    let dir = setup(A_OLD, B_NEW);
    let status = Command::new("gcc")
        .current_dir(dir.path())
        .args([
            "-fPIC",
            "-shared",
            "-ffunction-sections",
            "-fdata-sections",
            "-g",
        ])
        .args(["-Wl,-soname,libb.so.1", "old/b.c", "-o", "libb.so"])
        .status()
        .unwrap();
    assert!(status.success());
    let args = [
        "--pair",
        "old/b.c:new/b.c",
        "--cflags",
        "-fPIC",
        "-o",
        "fix.ulp",
        "--target",
        "libb.so",
    ];
    let out = ulp_build(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let patch = read(&dir.path().join("fix.ulp"));
    assert_eq!(patch.meta.target.object.as_deref(), Some("libb.so"));
    assert!(patch.meta.target.build_id.is_some());
}

#[test]
fn distro_helpers_split_commands_read_diffs_and_adjust_commands() {
    use ulp_build::distro::{adjust, detect_strip, diff_files, shell_words, Entry, FileChange};
    assert_eq!(
        shell_words(r#"gcc -DX='"a b"' -DY="c\"d" e\ f -c x.c"#).unwrap(),
        ["gcc", r#"-DX="a b""#, r#"-DY=c"d"#, "e f", "-c", "x.c"]
    );
    assert!(shell_words("gcc 'open").is_err());

    let files = diff_files("--- a/x.c\t2020-01-01\n+++ b/x.c\t2020-01-02\n@@ -1 +1 @@\n-a\n+b\n");
    assert_eq!(
        files,
        [FileChange {
            old: Some("a/x.c".into()),
            new: Some("b/x.c".into())
        }]
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x.c", "a\n");
    assert_eq!(detect_strip(&files, dir.path()), Some(1));
    let plain = diff_files("--- x.c\n+++ x.c\n");
    assert_eq!(detect_strip(&plain, dir.path()), Some(0));

    let entry = Entry {
        directory: "/src/tree/build".into(),
        file: "../x.c".into(),
        arguments: None,
        command: Some("cc -O2 -MD -MF x.d -I/src/tree/inc -c ../x.c -o x.o".into()),
    };
    let (program, args, directory) = adjust(
        &entry,
        Path::new("/src/tree"),
        Path::new("/tmp/copy"),
        &["-g"],
        Some(Path::new("/tmp/x.o")),
    )
    .unwrap();
    assert_eq!(program, Path::new("cc"));
    assert_eq!(directory, Path::new("/tmp/copy/build"));
    assert_eq!(
        args,
        [
            "-ffile-prefix-map=/tmp/copy=/src/tree",
            "-O2",
            "-I/tmp/copy/inc",
            "../x.c",
            "-g",
            "-o",
            "/tmp/x.o"
        ]
    );
}

#[test]
fn parallel_runs_keep_the_order_of_their_items() {
    let items: Vec<u64> = (0..50).collect();
    let results = ulp_build::compile::run_parallel(&items, 4, |&i| {
        std::thread::sleep(std::time::Duration::from_millis((50 - i) % 7));
        i * 2
    });
    assert_eq!(results, items.iter().map(|i| i * 2).collect::<Vec<_>>());
    assert!(ulp_build::compile::parallelism() >= 1);
}

#[test]
fn distro_mode_change_no_unit_uses_exits_3_with_a_warning() {
    let dir = distro_tree();
    write(&dir.path().join("src"), "README", "old\n");
    let out = distro(
        dir.path(),
        "--- a/README\n+++ b/README\n@@ -1 +1 @@\n-old\n+new\n",
        "fix.ulp",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("warning: README is changed by fix.patch"),
        "{err}"
    );
    assert!(!dir.path().join("fix.ulp").exists());
}

#[test]
fn distro_mode_line_shift_only_is_no_change() {
    // An edit that only moves `checked` (and the `__LINE__` its assert passes) down by one line.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let filler: String = (0..40).map(|i| format!("/* filler {i} */\n")).collect();
    let old = format!(
        "#include <assert.h>\n{filler}int checked(int x)\n{{\n\tassert(x >= 0);\n\treturn x * 7;\n}}\n"
    );
    write(&src, "c.c", &old);
    let commands = format!(
        r#"[{{ "directory": "{}", "file": "c.c", "command": "gcc -O2 -c c.c -o c.o" }}]"#,
        src.display()
    );
    std::fs::write(dir.path().join("compile_commands.json"), commands).unwrap();
    let diff = "--- a/c.c\n+++ b/c.c\n@@ -1,2 +1,3 @@\n #include <assert.h>\n\
                +/* a comment the fix adds */\n /* filler 0 */\n";
    let out = distro(dir.path(), diff, "fix.ulp");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn distro_mode_relative_or_symlinked_directory_compiles_the_patched_copy() {
    for directory in ["src", "srclink"] {
        let dir = distro_tree();
        std::os::unix::fs::symlink(dir.path().join("src"), dir.path().join("srclink")).unwrap();
        // `directory` relative to the database's own directory (or through a symlink), `file`
        // relative to it.
        let commands = format!(
            r#"[{{ "directory": "{directory}", "file": "b.c", "command": "gcc -O0 -c b.c -o b.o" }}]"#
        );
        std::fs::write(dir.path().join("compile_commands.json"), commands).unwrap();
        let out = distro(dir.path(), B_DIFF, "fix.ulp");
        assert_eq!(out.status.code(), Some(0), "{directory}: {}", stderr(&out));
        assert_eq!(
            replaced(&read(&dir.path().join("fix.ulp"))),
            vec![helper_in("b.c")],
            "{directory}"
        );
    }
}

#[test]
fn distro_mode_rename_is_one_error_line() {
    let dir = distro_tree();
    let diff = "diff --git a/b.c b/b2.c\nsimilarity index 100%\nrename from b.c\nrename to b2.c\n";
    let out = distro(dir.path(), diff, "fix.ulp");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("renames or copies files"), "{err}");
}

#[test]
fn distro_mode_wrong_strip_level_says_so() {
    let dir = distro_tree();
    std::fs::write(dir.path().join("fix.patch"), B_DIFF).unwrap();
    let out = ulp_build(
        dir.path(),
        &[
            "--source",
            "src",
            "--diff",
            "fix.patch",
            "--compile-commands",
            "compile_commands.json",
            "--strip",
            "0",
            "-o",
            "fix.ulp",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong --strip"), "{}", stderr(&out));
}

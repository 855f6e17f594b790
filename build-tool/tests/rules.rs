//! One test per correlation/comparison rule (docs/BUILD.md "correlate", "compare", "closure"), on
//! pairs of small C files compiled by the real gcc and clang. Each asserts the exact set of replaced
//! functions (by the running program's name), new functions and external references, and first that
//! the compiler really produced what the rule is about (the clone, the renumbered static local, …), so
//! that no test can pass vacuously.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use ulp_build::compile::{compile_pair, find_compiler, split_flags};
use ulp_build::object_model::ObjectModel;
use ulp_build::{analyze, Analysis};
use ulp_runtime::patch::RelocTarget;
use ulp_runtime::Patch;

struct Built {
    old: ObjectModel,
    new: ObjectModel,
    analysis: Analysis,
}

/// Compile OLD and NEW with `cc` and `cflags`, rename symbols of NEW's object (`objcopy
/// --redefine-sym`, to stand for a compiler that numbered its clones differently), parse both with
/// their source texts, and analyze.
fn build_renamed(cc: &str, old: &str, new: &str, cflags: &str, renames: &[(&str, &str)]) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let (old_c, new_c) = (old_dir.join("prog.c"), new_dir.join("prog.c"));
    std::fs::write(&old_c, old).unwrap();
    std::fs::write(&new_c, new).unwrap();
    let compiler = find_compiler(Some(cc)).unwrap();
    let (old_o, new_o) = compile_pair(
        &compiler,
        &split_flags(&[cflags.to_string()]),
        &old_c,
        &new_c,
        dir.path(),
    )
    .unwrap();
    for (from, to) in renames {
        let status = Command::new("objcopy")
            .arg(format!("--redefine-sym={from}={to}"))
            .arg(&new_o)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let parse = |p: &Path, text: &str| {
        ObjectModel::parse(&std::fs::read(p).unwrap(), "prog.c")
            .unwrap()
            .with_source(text)
    };
    let (old_model, new_model) = (parse(&old_o, old), parse(&new_o, new));
    let analysis = analyze(&old_model, &new_model, "test").unwrap();
    Built {
        old: old_model,
        new: new_model,
        analysis,
    }
}

fn build(cc: &str, old: &str, new: &str, cflags: &str) -> Built {
    build_renamed(cc, old, new, cflags, &[])
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn has_function(model: &ObjectModel, name: &str) -> bool {
    model.symbol_by_name(name).is_some_and(|s| s.is_function())
}

/// The compilers to test with: gcc always; clang when installed.
fn compilers() -> Vec<&'static str> {
    let mut list = vec!["gcc"];
    if find_compiler(Some("clang")).is_ok() {
        list.push("clang");
    }
    list
}

/// The patch, and its exact replaced functions (running program's names), new functions and
/// references.
fn outcome(
    built: Built,
    what: &str,
) -> (Patch, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (patch, new_functions) = match built.analysis {
        Analysis::Patch {
            patch,
            new_functions,
        } => (*patch, new_functions),
        other => panic!("{what}: expected a patch, got {other:?}"),
    };
    let replaced = patch
        .meta
        .functions
        .iter()
        .map(|f| f.target.name.clone())
        .collect();
    let references = patch
        .meta
        .references
        .iter()
        .map(|r| r.name.clone())
        .collect();
    (
        patch,
        replaced,
        new_functions.into_iter().collect(),
        references,
    )
}

// ---------------------------------------------------------------------------------------------------
// Rule 1: GCC clones correlate ignoring their numbers; a replaced clone is named by OLD's name.

const CONSTPROP: &str = r#"
static __attribute__((noinline)) int scale(int x, int k) { return x * k + (x >> 3); }
int use_scale(int x) { return scale(x, 7) + scale(x + 1, 7); }
"#;

#[test]
fn constprop_clone_with_a_changed_body_is_replaced_by_its_old_name() {
    let new = CONSTPROP.replace("(x >> 3)", "(x >> 4)");
    for flags in ["-O2", "-O2 -fPIE", "-Os", "-O2 -fcf-protection"] {
        let built = build("gcc", CONSTPROP, &new, flags);
        assert!(has_function(&built.old, "scale.constprop.0"), "{flags}");
        let (_, replaced, new_functions, references) = outcome(built, flags);
        assert_eq!(replaced, set(&["scale.constprop.0"]), "{flags}");
        assert!(new_functions.is_empty(), "{flags}: {new_functions:?}");
        assert!(references.is_empty(), "{flags}: {references:?}");
    }
}

#[test]
fn renumbered_constprop_clone_pairs_with_the_old_one() {
    // NEW numbers the clone 3: the patch still replaces OLD's `scale.constprop.0` with NEW's code, the
    // unchanged caller (calling the renumbered clone) is no change, and nothing is new.
    let new = CONSTPROP.replace("(x >> 3)", "(x >> 4)");
    for flags in ["-O2", "-O2 -fcf-protection"] {
        let built = build_renamed(
            "gcc",
            CONSTPROP,
            &new,
            flags,
            &[("scale.constprop.0", "scale.constprop.3")],
        );
        assert!(has_function(&built.new, "scale.constprop.3"), "{flags}");
        assert!(!has_function(&built.new, "scale.constprop.0"), "{flags}");
        let (patch, replaced, new_functions, references) = outcome(built, flags);
        assert_eq!(replaced, set(&["scale.constprop.0"]), "{flags}");
        assert_eq!(patch.meta.functions[0].replacement, "scale.constprop.3");
        assert!(new_functions.is_empty(), "{flags}: {new_functions:?}");
        assert!(references.is_empty(), "{flags}: {references:?}");
    }
}

#[test]
fn renumbered_clone_that_did_not_change_is_no_change_and_callers_refer_to_the_old_name() {
    // Only the caller changes; it calls the (renumbered, unchanged) clone in the running program.
    let new = CONSTPROP.replace("scale(x + 1, 7)", "scale(x + 2, 7)");
    let built = build_renamed(
        "gcc",
        CONSTPROP,
        &new,
        "-O2",
        &[("scale.constprop.0", "scale.constprop.1")],
    );
    assert!(has_function(&built.new, "scale.constprop.1"));
    let (_, replaced, new_functions, references) = outcome(built, "gcc");
    assert_eq!(replaced, set(&["use_scale"]));
    assert!(new_functions.is_empty(), "{new_functions:?}");
    assert_eq!(references, set(&["scale.constprop.0"]));
}

const ISRA: &str = r#"
struct big { int a, b, c, d; };
static __attribute__((noinline)) int field(struct big *p, int unused) {
    return p->c * 3 + p->c * p->c - (p->c >> 2);
}
int use_field(struct big *p) { return field(p, 1) + field(p + 1, 2); }
"#;

#[test]
fn isra_clone_is_replaced_by_its_old_name_even_when_renumbered() {
    let new = ISRA.replace("p->c * 3", "p->c * 5");
    let clone = "field.constprop.0.isra.0";
    let built = build("gcc", ISRA, &new, "-O2");
    assert!(has_function(&built.old, clone));
    let (_, replaced, new_functions, references) = outcome(built, "gcc");
    assert_eq!(replaced, set(&[clone]));
    assert!(new_functions.is_empty() && references.is_empty());

    let built = build_renamed(
        "gcc",
        ISRA,
        &new,
        "-O2",
        &[(clone, "field.constprop.2.isra.1")],
    );
    let (patch, replaced, new_functions, references) = outcome(built, "gcc renamed");
    assert_eq!(replaced, set(&[clone]));
    assert_eq!(
        patch.meta.functions[0].replacement,
        "field.constprop.2.isra.1"
    );
    assert!(new_functions.is_empty() && references.is_empty());
}

const PART: &str = r#"
#include <stdio.h>
static int table[64];
static int lookup(int k) {
    if (k >= 0 && k < 4) return table[k];
    int s = 0;
    for (int i = 0; i < 64; i++) { s += table[i] * k; if (s > 1000) { printf("big %d %d\n", s, i); s /= 3; } }
    printf("lookup %d\n", s);
    table[k & 63] = s;
    return s;
}
int use1(int k) { return lookup(k) * 2; }
int use2(int k) { return lookup(k + 1) * 3; }
int use3(int k) { return lookup(k - 1) * 5; }
"#;

#[test]
fn part_clone_is_replaced_by_its_old_name_even_when_renumbered() {
    let new = PART.replace("s /= 3", "s /= 4");
    let built = build("gcc", PART, &new, "-O2");
    assert!(has_function(&built.old, "lookup.part.0"));
    let (_, replaced, new_functions, references) = outcome(built, "gcc");
    assert_eq!(replaced, set(&["lookup.part.0"]));
    assert!(new_functions.is_empty());
    assert_eq!(references, set(&["printf", "table"]));

    let built = build_renamed(
        "gcc",
        PART,
        &new,
        "-O2",
        &[("lookup.part.0", "lookup.part.7")],
    );
    let (_, replaced, new_functions, references) = outcome(built, "gcc renamed");
    assert_eq!(replaced, set(&["lookup.part.0"]));
    assert!(new_functions.is_empty());
    assert_eq!(references, set(&["printf", "table"]));
}

#[test]
fn clone_rules_do_not_apply_to_clang_which_replaces_the_plain_function() {
    // clang makes no `.isra`/`.constprop`/`.part` clones: the same changes replace the function itself.
    if !compilers().contains(&"clang") {
        return;
    }
    for (old, from, to, function) in [
        (CONSTPROP, "(x >> 3)", "(x >> 4)", "scale"),
        (ISRA, "p->c * 3", "p->c * 5", "field"),
    ] {
        let built = build("clang", old, &old.replace(from, to), "-O2");
        assert!(has_function(&built.old, function));
        assert!(!built
            .old
            .symbols
            .iter()
            .any(|s| s.name.starts_with(&format!("{function}."))));
        let (_, replaced, new_functions, references) = outcome(built, function);
        assert_eq!(replaced, set(&[function]));
        assert!(new_functions.is_empty() && references.is_empty());
    }
}

// Rule 5a: a changed `.cold` part marks its parent changed.

const COLD: &str = r#"
#include <stdio.h>
__attribute__((cold, noinline)) void report(const char *m, int n) { fprintf(stderr, "%s %d\n", m, n); }
int sum(const int *p, int n) {
    int s = 0;
    for (int i = 0; i < n; i++) {
        if (__builtin_expect(p[i] < 0, 0)) {
            report("negative", i);
            s -= p[i] * 3;
            continue;
        }
        s += p[i];
    }
    return s;
}
"#;

#[test]
fn changed_cold_part_replaces_its_parent() {
    let new = COLD.replace("p[i] * 3", "p[i] * 5");
    for cc in compilers() {
        for flags in ["-O2", "-O2 -fcf-protection"] {
            let built = build(cc, COLD, &new, flags);
            if cc == "gcc" {
                assert!(has_function(&built.old, "sum.cold"), "{flags}");
            }
            let (_, replaced, new_functions, references) = outcome(built, cc);
            assert_eq!(replaced, set(&["sum"]), "{cc} {flags}");
            assert!(new_functions.is_empty(), "{cc} {flags}: {new_functions:?}");
            assert_eq!(references, set(&["report"]), "{cc} {flags}");
        }
    }
}

// Rule 2: static locals pair by the function that uses them, and keep OLD's name.

const STATIC_LOCAL: &str = r#"
int first(void) { static int count; return ++count; }
__attribute__((noinline)) int next(void) { static int count = 5; count += 1; return count; }
"#;

/// The static local named like `count` that function `function` of `model` uses.
fn static_used_by(model: &ObjectModel, function: &str, like: &str) -> String {
    let f = model.symbol_by_name(function).unwrap().index;
    model
        .symbols
        .iter()
        .filter(|s| s.is_data() && s.name.contains(like))
        .find(|s| ulp_build::correlate::users(model, s.index).contains(&f))
        .map(|s| s.name.clone())
        .unwrap()
}

#[test]
fn renumbered_static_local_is_the_same_variable_named_as_in_old() {
    // A new function after `next` with its own `count` makes GCC renumber `next`'s (`count.0` →
    // `count.1`, and the new one is `count.0`): `next` still refers to the running program's variable
    // by OLD's name, and the new function's variable is new data although OLD has its name.
    let new = STATIC_LOCAL.replace("count += 1", "count += 2")
        + "__attribute__((noinline)) int third(void) { static int count = 9; return count++; }\n";
    for cc in compilers() {
        for flags in ["-O0", "-O2", "-Os -fPIE"] {
            let built = build(cc, STATIC_LOCAL, &new, flags);
            let old_name = static_used_by(&built.old, "next", "count");
            let new_name = static_used_by(&built.new, "next", "count");
            let third_name = static_used_by(&built.new, "third", "count");
            if cc == "gcc" {
                assert_ne!(old_name, new_name, "{flags}: GCC did not renumber");
                assert_eq!(third_name, old_name, "{flags}");
            }
            let (patch, replaced, new_functions, references) = outcome(built, cc);
            assert_eq!(replaced, set(&["next"]), "{cc} {flags}");
            assert_eq!(new_functions, set(&["third"]), "{cc} {flags}");
            assert_eq!(references, set(&[old_name.as_str()]), "{cc} {flags}");
            assert_eq!(
                patch.meta.new_data,
                vec![third_name.clone()],
                "{cc} {flags}"
            );
            assert!(
                patch
                    .symbols
                    .iter()
                    .all(|s| s.name != new_name || new_name == third_name),
                "{cc} {flags}: {new_name} carried"
            );
        }
    }
}

// Rule 3: special statics are never paired, only compared by content and carried.

const SPECIAL: &str = r#"
#include <stdio.h>
__attribute__((noinline)) int code(int k) { switch (k) { case 0: return 11; case 1: return 7; case 2: return 93; case 3: return 4; case 4: return 55; default: return 0; } }
__attribute__((noinline)) void who(int k) { printf("%s %d\n", __func__, k); }
"#;

#[test]
fn special_statics_are_carried_not_referenced() {
    let new = SPECIAL.replace("return 93", "return 94");
    for cc in compilers() {
        for flags in ["-O0", "-O2"] {
            let built = build(cc, SPECIAL, &new, flags);
            let gcc_o2 = cc == "gcc" && flags == "-O2";
            if gcc_o2 {
                assert!(built
                    .old
                    .symbols
                    .iter()
                    .any(|s| s.name.starts_with("CSWTCH.")));
            }
            let (patch, replaced, new_functions, references) = outcome(built, cc);
            assert_eq!(replaced, set(&["code"]), "{cc} {flags}");
            assert!(new_functions.is_empty(), "{cc} {flags}");
            assert!(references.is_empty(), "{cc} {flags}: {references:?}");
            if gcc_o2 {
                assert!(patch.symbols.iter().any(|s| s.name.starts_with("CSWTCH.")));
            }
        }
    }
}

#[test]
fn renumbered_func_name_static_is_no_change_for_its_unchanged_user() {
    // A new function with `__func__` after `who` renumbers `who`'s `__func__.N` in GCC's output;
    // compared by content, `who` did not change; only `code` (which calls the new function) did.
    let new = SPECIAL.replace(
        "__attribute__((noinline)) int code(int k) {",
        "void trace(void);\n__attribute__((noinline)) int code(int k) { trace();",
    ) + "__attribute__((noinline)) void trace(void) { puts(__func__); }\n";
    for cc in compilers() {
        for flags in ["-O0", "-O2"] {
            let built = build(cc, SPECIAL, &new, flags);
            if cc == "gcc" {
                assert_ne!(
                    static_used_by(&built.old, "who", "__func__"),
                    static_used_by(&built.new, "who", "__func__"),
                    "{flags}: GCC did not renumber"
                );
            }
            let (_, replaced, new_functions, references) = outcome(built, cc);
            assert_eq!(replaced, set(&["code"]), "{cc} {flags}");
            assert_eq!(new_functions, set(&["trace"]), "{cc} {flags}");
            assert_eq!(references, set(&["puts"]), "{cc} {flags}");
        }
    }
}

// Rule 4: `__LINE__`-only shifts are no change.

const LINES: &str = r#"
#include <stdio.h>
#define LOG(msg) log_at(__LINE__, msg)
__attribute__((noinline)) void log_at(int line, const char *msg) { printf("%d: %s\n", line, msg); }
__attribute__((noinline)) int edited(int x) {
    int y = x * 31;
    y ^= y >> 3;
    return y + 1;
}
__attribute__((noinline)) int later(int x) {
    LOG("later");
    if (x > 1000) LOG("big");
    return x * 2;
}
"#;

#[test]
fn line_number_shift_is_no_change() {
    let new = LINES.replace("    return y + 1;\n", "    y += 2;\n    return y + 1;\n");
    for cc in compilers() {
        for flags in ["-O0", "-O2", "-Os", "-O2 -fcf-protection"] {
            let built = build(cc, LINES, &new, flags);
            // Without the sources, `later` differs (its `__LINE__` immediates moved).
            let mut bare = (built.old.clone(), built.new.clone());
            bare.0.source_text = None;
            bare.1.source_text = None;
            match analyze(&bare.0, &bare.1, "bare").unwrap() {
                Analysis::Patch { patch, .. } => assert!(
                    patch
                        .meta
                        .functions
                        .iter()
                        .any(|f| f.target.name == "later"),
                    "{cc} {flags}: no line shift to test"
                ),
                other => panic!("{cc} {flags}: {other:?}"),
            }
            let (_, replaced, new_functions, references) = outcome(built, cc);
            assert_eq!(replaced, set(&["edited"]), "{cc} {flags}");
            assert!(new_functions.is_empty(), "{cc} {flags}");
            assert!(references.is_empty(), "{cc} {flags}: {references:?}");
        }
    }
}

#[test]
fn line_shift_rule_needs_the_sources_and_does_not_hide_real_changes() {
    let shifted = LINES.replace("    return y + 1;\n", "    y += 2;\n    return y + 1;\n");
    for cc in compilers() {
        // The same shift plus a changed constant that is not a line number: `later` changed.
        let new = shifted.replace("x * 2", "x * 3");
        let (_, replaced, _, _) = outcome(build(cc, LINES, &new, "-O2"), cc);
        assert_eq!(replaced, set(&["edited", "later"]), "{cc}");
        // A constant that happens to equal a shifted line number, changed in the edited line itself.
        let line = LINES[..LINES.find("x > 1000").unwrap()].lines().count() as u64;
        let new = shifted.replace("x > 1000", &format!("x > {line}"));
        let old = LINES.replace("x > 1000", &format!("x > {}", line - 1));
        let (_, replaced, _, _) = outcome(build(cc, &old, &new, "-O2"), cc);
        assert_eq!(replaced, set(&["edited", "later"]), "{cc}");
    }
}

// Rule 5b: switch jump tables, new .bss and initialized data, pointers to new functions.

const TABLES: &str = r#"
#include <stdio.h>
__attribute__((noinline)) int dispatch(int k, int x) {
    switch (k) {
    case 0: return x + 3; case 1: return x * 7; case 2: return x - 11; case 3: return x << 2;
    case 4: return x ^ 91; case 5: return x / 3; case 6: return x % 5; default: return -1;
    }
}
int main(int argc, char **argv) { (void)argv; printf("%d\n", dispatch(argc, 5)); return 0; }
"#;

#[test]
fn jump_table_is_carried() {
    let new = TABLES.replace("x - 11", "x - 12");
    for cc in compilers() {
        for flags in ["-O2", "-O2 -fPIE", "-Os -fcf-protection"] {
            let built = build(cc, TABLES, &new, flags);
            let (patch, replaced, new_functions, references) = outcome(built, cc);
            assert_eq!(replaced, set(&["dispatch"]), "{cc} {flags}");
            assert!(new_functions.is_empty(), "{cc} {flags}");
            assert!(references.is_empty(), "{cc} {flags}: {references:?}");
            // Every relocation of the carried code resolves inside the patch.
            assert!(patch
                .relocations
                .iter()
                .all(|r| !matches!(r.target, RelocTarget::External(_))));
        }
    }
}

const POINTERS: &str = r#"
#include <stdio.h>
__attribute__((noinline)) int twice(int x) { return 2 * x; }
__attribute__((noinline)) int apply(int x) { return twice(x); }
int main(void) { printf("%d\n", apply(4)); return 0; }
"#;

#[test]
fn new_data_and_pointers_to_new_functions_resolve_to_carried_copies() {
    let new = POINTERS.replace(
        "__attribute__((noinline)) int apply(int x) { return twice(x); }",
        "__attribute__((noinline)) int thrice(int x) { return 3 * x; }\n\
         static int calls;\n\
         static int bias = 17;\n\
         static int (*ops[])(int) = { twice, thrice };\n\
         int (*volatile last)(int);\n\
         __attribute__((noinline)) int apply(int x) { calls++; last = thrice; \
         bias ^= x; return ops[x & 1](x) + bias + calls; }",
    );
    for cc in compilers() {
        for flags in ["-O0 -fno-pie", "-O2 -fPIE", "-Os"] {
            let built = build(cc, POINTERS, &new, flags);
            let (patch, replaced, new_functions, references) = outcome(built, cc);
            assert_eq!(replaced, set(&["apply"]), "{cc} {flags}");
            assert_eq!(new_functions, set(&["thrice"]), "{cc} {flags}");
            assert_eq!(references, set(&["twice"]), "{cc} {flags}");
            let new_data: BTreeSet<String> = patch.meta.new_data.iter().cloned().collect();
            for d in ["calls", "bias", "ops", "last"] {
                assert!(new_data.contains(d), "{cc} {flags}: {new_data:?}");
            }
            // Every reference to `thrice` (lea/mov in code, R_X86_64_64 in `ops`) is to the carried
            // copy.
            let (index, thrice) = patch.symbol("thrice").expect("thrice carried");
            let to_thrice = patch
                .relocations
                .iter()
                .filter(|r| match r.target {
                    RelocTarget::Symbol(s) => s == index,
                    RelocTarget::Section(s) => {
                        s == thrice.section && r.addend as u64 == thrice.offset
                    }
                    RelocTarget::External(_) => false,
                })
                .count();
            assert!(to_thrice >= 2, "{cc} {flags}: {to_thrice}");
        }
    }
}

#[test]
fn clone_that_cannot_be_paired_is_refused_naming_it() {
    // NEW has two clones of `scale` where OLD has one, and neither has OLD's code: which one replaces
    // the running clone cannot be decided. (A second clone is made by renaming another function.)
    let new = CONSTPROP.replace("(x >> 3)", "(x >> 4)")
        + "static __attribute__((noinline)) int other(int x, int k) { return x * k - 5; }\n\
           int use_other(int x) { return other(x, 3) + other(x + 1, 3); }\n";
    let built = build_renamed(
        "gcc",
        CONSTPROP,
        &new,
        "-O2",
        &[("other.constprop.0", "scale.constprop.1")],
    );
    assert!(has_function(&built.new, "scale.constprop.0"));
    assert!(has_function(&built.new, "scale.constprop.1"));
    match built.analysis {
        Analysis::Refused(reasons) => {
            let clones: Vec<&ulp_build::refuse::Refusal> = reasons
                .iter()
                .filter(|r| r.contains("cannot be paired"))
                .collect();
            assert_eq!(clones.len(), 2, "{reasons:?}");
            assert!(clones
                .iter()
                .all(|r| r.contains("OLD's 'scale.constprop.0'")));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

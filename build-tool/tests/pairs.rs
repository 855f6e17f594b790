//! Behaviour of the pipeline on pairs of small C files compiled by the real gcc, at -O0 and -O2,
//! PIE and non-PIE.

use std::collections::BTreeSet;
use std::path::Path;

use ulp_build::compile::{compile_pair, find_compiler, split_flags};
use ulp_build::object_model::ObjectModel;
use ulp_build::{analyze, Analysis};
use ulp_runtime::meta::Binding;
use ulp_runtime::patch::{RelocTarget, SectionKind};
use ulp_runtime::Patch;

const FLAVOURS: [&str; 4] = ["-O0 -fno-pie", "-O0 -fPIE", "-O2 -fno-pie", "-O2 -fPIE"];

fn build(old: &str, new: &str, cflags: &str) -> Analysis {
    let dir = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let (old_c, new_c) = (old_dir.join("prog.c"), new_dir.join("prog.c"));
    std::fs::write(&old_c, old).unwrap();
    std::fs::write(&new_c, new).unwrap();
    let cc = find_compiler(None).unwrap();
    let (old_o, new_o) = compile_pair(
        &cc,
        &split_flags(&[cflags.to_string()]),
        &old_c,
        &new_c,
        dir.path(),
    )
    .unwrap();
    let parse = |p: &Path| ObjectModel::parse(&std::fs::read(p).unwrap(), "prog.c").unwrap();
    analyze(&parse(&old_o), &parse(&new_o), "test").unwrap()
}

fn patch(analysis: Analysis, flavour: &str) -> (Patch, Vec<String>) {
    match analysis {
        Analysis::Patch {
            patch,
            new_functions,
        } => (*patch, new_functions),
        other => panic!("{flavour}: expected a patch, got {other:?}"),
    }
}

fn replaced(patch: &Patch) -> BTreeSet<String> {
    patch
        .meta
        .functions
        .iter()
        .map(|f| f.target.name.clone())
        .collect()
}

fn references(patch: &Patch) -> BTreeSet<String> {
    patch
        .meta
        .references
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const GLOBAL_OLD: &str = r#"
#include <stdio.h>
int scale = 3;
__attribute__((noipa)) int compute(int x) { return x * scale + 1; }
__attribute__((noipa)) int other(int x) { return x - 7; }
int main(void) { printf("%d %d\n", compute(2), other(3)); return 0; }
"#;

#[test]
fn body_change_of_a_global_function_replaces_only_it() {
    let new = GLOBAL_OLD.replace("x * scale + 1", "x * scale + 2");
    for flavour in FLAVOURS {
        let (patch, new_functions) = patch(build(GLOBAL_OLD, &new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["compute"]), "{flavour}");
        assert!(new_functions.is_empty(), "{flavour}");
        assert_eq!(references(&patch), set(&["scale"]), "{flavour}");
        let f = &patch.meta.functions[0];
        assert_eq!(f.replacement, "compute");
        assert_eq!(f.target.binding, Binding::Global);
        assert_eq!(f.target.file, None);
        assert!(f.reason.contains("differ"), "{flavour}: {}", f.reason);
        assert!(patch.symbol("compute").is_some());
    }
}

const STATIC_OLD: &str = r#"
#include <stdio.h>
static __attribute__((noipa)) int compute(int x) { return x * 3 + 1; }
int main(void) { printf("%d\n", compute(2)); return 0; }
"#;

#[test]
fn body_change_of_a_static_function_names_its_file() {
    let new = STATIC_OLD.replace("x * 3 + 1", "x * 5 + 1");
    for flavour in FLAVOURS {
        let (patch, _) = patch(build(STATIC_OLD, &new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["compute"]), "{flavour}");
        let f = &patch.meta.functions[0];
        assert_eq!(f.target.binding, Binding::Local);
        assert_eq!(f.target.file.as_deref(), Some("prog.c"));
        assert_eq!(f.target.position, 0);
    }
}

const STRING_OLD: &str = r#"
#include <stdio.h>
__attribute__((noipa)) void greet(void) { puts("hello"); }
__attribute__((noipa)) void part(void) { puts("world"); }
int main(void) { greet(); part(); return 0; }
"#;

#[test]
fn changed_string_literal_is_carried() {
    let new = STRING_OLD.replace("\"hello\"", "\"hello, patched\"");
    for flavour in FLAVOURS {
        let (patch, _) = patch(build(STRING_OLD, &new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["greet"]), "{flavour}");
        assert_eq!(references(&patch), set(&["puts"]), "{flavour}");
        let carried = patch
            .sections
            .iter()
            .filter(|s| s.kind == SectionKind::ReadOnlyData)
            .any(|s| s.data.windows(14).any(|w| w == b"hello, patched"));
        assert!(carried, "{flavour}: string not carried");
    }
}

#[test]
fn literal_that_only_moved_is_no_change() {
    // A new literal in an unchanged-behaviour position shifts "world" inside the string section.
    let old = STRING_OLD.replace("puts(\"hello\")", "puts(\"hello\"); puts(\"hello\")");
    let new = old.clone().replace(
        "__attribute__((noipa)) void greet",
        "static const char *unused_but_emitted(void) __attribute__((used));\nstatic const char *unused_but_emitted(void) { return \"a literal in front\"; }\n__attribute__((noipa)) void greet",
    );
    for flavour in FLAVOURS {
        // The only thing that may appear is the new (unused) function itself, and a patch that
        // replaces nothing is refused: so the refusal names only it, and `greet` is not replaced.
        match build(&old, &new, flavour) {
            Analysis::Refused(reasons) => assert_eq!(
                reasons,
                vec![
                    "the change replaces no function of the running program (it only adds \
                     unused_but_emitted)"
                        .to_string()
                ],
                "{flavour}"
            ),
            other => panic!("{flavour}: {other:?}"),
        }
    }
}

#[test]
fn literal_moved_by_reordering_is_no_change() {
    let old = r#"
#include <stdio.h>
__attribute__((noipa)) void one(void) { puts("first literal"); }
__attribute__((noipa)) void two(void) { puts("second literal"); }
int main(void) { one(); two(); return 0; }
"#;
    // Same functions, defined in the other order: every literal moves.
    let new = r#"
#include <stdio.h>
__attribute__((noipa)) void two(void) { puts("second literal"); }
__attribute__((noipa)) void one(void) { puts("first literal"); }
int main(void) { one(); two(); return 0; }
"#;
    for flavour in FLAVOURS {
        assert!(
            matches!(build(old, new, flavour), Analysis::NoChange),
            "{flavour}"
        );
    }
}

const HELPER_OLD: &str = r#"
#include <stdio.h>
__attribute__((noipa)) int compute(int x) { volatile int y = x; return y + 1; }
int main(void) { printf("%d\n", compute(2)); return 0; }
"#;

#[test]
fn new_static_helper_is_carried_and_caller_replaced() {
    let new = r#"
#include <stdio.h>
static __attribute__((noipa)) int helper(int x) { return x * 10; }
__attribute__((noipa)) int compute(int x) { volatile int y = x; return helper(y) + 1; }
int main(void) { printf("%d\n", compute(2)); return 0; }
"#;
    for flavour in FLAVOURS {
        let (patch, new_functions) = patch(build(HELPER_OLD, new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["compute"]), "{flavour}");
        assert_eq!(new_functions, vec!["helper".to_string()], "{flavour}");
        assert!(
            references(&patch).is_empty(),
            "{flavour}: {:?}",
            references(&patch)
        );
        let (helper, _) = patch.symbol("helper").unwrap();
        assert!(
            patch
                .relocations
                .iter()
                .any(|r| r.target == RelocTarget::Symbol(helper)),
            "{flavour}: compute does not call the carried helper"
        );
    }
}

const COUNTER_OLD: &str = r#"
#include <stdio.h>
__attribute__((noipa)) int tick(void) { static int count; count++; return count; }
int main(void) { printf("%d\n", tick()); return 0; }
"#;

#[test]
fn static_local_counter_is_an_external_reference() {
    let new = COUNTER_OLD.replace("count++; return count;", "count += 2; return count;");
    for flavour in FLAVOURS {
        let (patch, new_functions) = patch(build(COUNTER_OLD, &new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["tick"]), "{flavour}");
        assert!(new_functions.is_empty());
        assert!(patch.meta.new_data.is_empty(), "{flavour}");
        let count = patch
            .meta
            .references
            .iter()
            .find(|r| r.name.starts_with("count."))
            .unwrap_or_else(|| panic!("{flavour}: {:?}", patch.meta.references));
        assert_eq!(count.binding, Binding::Local);
        assert_eq!(count.file.as_deref(), Some("prog.c"));
        assert!(
            patch.sections.iter().all(|s| s.kind != SectionKind::Bss),
            "{flavour}: counter carried"
        );
    }
}

#[test]
fn calls_to_printf_and_malloc_are_external_references() {
    let old = r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noipa)) void work(int n) { printf("%d\n", n); }
int main(void) { work(3); return 0; }
"#;
    let new = r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noipa)) void work(int n) { int *p = malloc(sizeof *p); *p = n; printf("%p %d!\n", (void *)p, *p); free(p); }
int main(void) { work(3); return 0; }
"#;
    for flavour in FLAVOURS {
        let (patch, _) = patch(build(old, new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["work"]), "{flavour}");
        let refs = references(&patch);
        assert!(
            refs.contains("malloc") && refs.contains("free"),
            "{flavour}: {refs:?}"
        );
        assert!(
            refs.contains("printf") || refs.contains("__printf_chk"),
            "{flavour}: {refs:?}"
        );
        for r in &patch.meta.references {
            assert_eq!(r.binding, Binding::Global);
            assert_eq!(r.file, None);
        }
    }
}

#[test]
fn unchanged_file_is_no_change() {
    for flavour in FLAVOURS {
        assert!(
            matches!(build(GLOBAL_OLD, GLOBAL_OLD, flavour), Analysis::NoChange),
            "{flavour}"
        );
    }
}

#[test]
fn changed_initializer_of_a_global_is_refused_naming_it() {
    let new = GLOBAL_OLD.replace("int scale = 3;", "int scale = 4;");
    for flavour in FLAVOURS {
        match build(GLOBAL_OLD, &new, flavour) {
            Analysis::Refused(reasons) => {
                assert_eq!(
                    reasons,
                    vec!["initializer of global 'scale' changed".to_string()],
                    "{flavour}"
                )
            }
            other => panic!("{flavour}: {other:?}"),
        }
    }
}

#[test]
fn new_global_and_bss_variables_are_carried_as_new_data() {
    let new = r#"
#include <stdio.h>
int added = 42;
int zeroed;
__attribute__((noipa)) int compute(int x) { volatile int y = x; zeroed++; return y + added + zeroed; }
int main(void) { printf("%d\n", compute(2)); return 0; }
"#;
    for flavour in FLAVOURS {
        let (patch, _) = patch(build(HELPER_OLD, new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["compute"]), "{flavour}");
        assert_eq!(patch.meta.new_data, vec!["added", "zeroed"], "{flavour}");
        assert!(patch.sections.iter().any(|s| s.kind == SectionKind::Bss));
        assert!(patch.sections.iter().any(|s| s.kind == SectionKind::Data));
    }
}

#[test]
fn switch_with_a_jump_table_carries_the_table() {
    let body = |k: i32| {
        format!(
            r#"
#include <stdio.h>
__attribute__((noipa)) int pick(int x) {{
  switch (x) {{ case 0: return 11; case 1: return 23; case 2: return 37; case 3: return 41;
  case 4: return 53; case 5: return 67; case 6: return 71; case 7: return {k}; }}
  return -1;
}}
int main(void) {{ printf("%d\n", pick(3)); return 0; }}
"#
        )
    };
    for flavour in FLAVOURS {
        let (patch, _) = patch(build(&body(79), &body(97), flavour), flavour);
        assert_eq!(replaced(&patch), set(&["pick"]), "{flavour}");
        assert!(references(&patch).contains("printf") || references(&patch).is_empty());
        assert!(!references(&patch).contains("pick"), "{flavour}");
    }
}

#[test]
fn new_thread_local_variable_is_refused() {
    let new = r#"
#include <stdio.h>
__thread int per_thread;
__attribute__((noipa)) int compute(int x) { volatile int y = x; per_thread++; return y + per_thread; }
int main(void) { printf("%d\n", compute(2)); return 0; }
"#;
    for flavour in FLAVOURS {
        match build(HELPER_OLD, new, flavour) {
            // The variable is named; its uses in `compute` are not refused on their own.
            Analysis::Refused(reasons) => assert!(
                reasons
                    .iter()
                    .any(|r| r.contains("new thread-local variable 'per_thread'")),
                "{flavour}: {reasons:?}"
            ),
            other => panic!("{flavour}: {other:?}"),
        }
    }
}

#[test]
fn existing_thread_local_variables_are_external_references() {
    let old = r#"
#include <stdio.h>
static __thread int hits;
extern __thread int total __attribute__((tls_model("initial-exec")));
__attribute__((noipa)) int bump(int x) { hits += x; total += 1; return hits + total; }
int main(void) { printf("%d\n", bump(2)); return 0; }
"#;
    let new = old.replace("hits += x;", "hits += 2 * x;");
    for flavour in FLAVOURS {
        let (patch, _) = patch(build(old, &new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["bump"]), "{flavour}");
        assert!(patch.meta.new_data.is_empty(), "{flavour}");
        let refs = references(&patch);
        assert!(
            refs.contains("hits") && refs.contains("total"),
            "{flavour}: {refs:?}"
        );
        let tls: BTreeSet<u32> = patch
            .relocations
            .iter()
            .map(|r| r.r_type)
            .filter(|&t| ulp_runtime::x86_64::is_supported_tls(t))
            .collect();
        assert_eq!(
            tls,
            [
                object::elf::R_X86_64_TPOFF32,
                object::elf::R_X86_64_GOTTPOFF
            ]
            .into_iter()
            .collect(),
            "{flavour}"
        );
    }
}

#[test]
fn function_too_small_for_a_jump_is_refused() {
    let old = "int tiny(void) { return 0; }\n";
    let new = "int tiny(void) { return 1; }\n";
    // At -O2, `xor %eax,%eax; ret` is 3 bytes.
    match build(old, new, "-O2 -fcf-protection=none") {
        Analysis::Refused(reasons) => assert_eq!(
            reasons,
            vec!["function 'tiny' is 3 bytes, too small for a 5-byte jump".to_string()]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pc_relative_target_uses_the_instruction_end_not_minus_4() {
    // `movl $5, counter(%rip)` has its 4-byte immediate after the displacement: addend is -8, yet it
    // refers to `counter` itself; a store of 5 vs 6 must be the only difference found.
    let old = r#"
static int counter;
__attribute__((noipa)) void set(void) { counter = 5; }
__attribute__((noipa)) int get(void) { return counter; }
"#;
    let new = old.replace("counter = 5", "counter = 6");
    for flavour in FLAVOURS {
        let (patch, _) = patch(build(old, &new, flavour), flavour);
        assert_eq!(replaced(&patch), set(&["set"]), "{flavour}");
        let counter = &patch.meta.references;
        assert_eq!(counter.len(), 1, "{flavour}: {counter:?}");
        assert_eq!(counter[0].name, "counter");
        assert_eq!(counter[0].binding, Binding::Local);
        let reloc = patch
            .relocations
            .iter()
            .find(|r| r.target == RelocTarget::External(0))
            .unwrap();
        assert_eq!(reloc.addend, -8, "{flavour}");
    }
}

#[test]
fn changed_constructor_is_refused() {
    let old = r#"
int ready;
__attribute__((constructor)) static void init(void) { ready = 1; __asm__ volatile("nop; nop; nop; nop; nop; nop"); }
"#;
    let new = old.replace("ready = 1", "ready = 2");
    match build(old, &new, "-O2") {
        Analysis::Refused(reasons) => {
            assert!(reasons.iter().any(|r| r.contains("'init'")), "{reasons:?}")
        }
        other => panic!("{other:?}"),
    }
}

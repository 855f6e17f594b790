//! The patch lifecycle with patches built by `ulp-build` from the `global_fn` fixture: two patches
//! of the same function stacked and reverted in any order, `--replace` over both, and `--all` over
//! three processes of the same binary.

use std::path::PathBuf;

use serde_json::Value;
use ulp_tests::{ulp_apply, ulp_build, ulp_info, Flavor, Session, Target};

const ORIGINAL: &str = "14757";
/// `fixtures/global_fn/new/prog.c`.
const FIRST: &str = "3051755";
/// `fixtures/global_fn/new2/prog.c`.
const SECOND: &str = "4082";
/// `fixtures/global_fn/new3/prog.c`.
const CUMULATIVE: &str = "-116505";

/// Builds the patch from the original to `fixtures/global_fn/<variant>/prog.c`.
fn build(s: &Session, variant: &str) -> PathBuf {
    let new = s.old.parent().unwrap().join(variant).join("prog.c");
    let out = s.dir.path().join(format!("{variant}.ulp"));
    let name = format!("global_fn-{variant}");
    let mut extra = vec!["--name", name.as_str()];
    extra.extend(s.flavor.build_args());
    ulp_build(&s.old, &new, &out, &s.flavor.cflags(), &extra).expect_code(0, "ulp-build");
    out
}

/// (id, name) of every patch `ulp-info -p` lists.
fn listed(pid: u32) -> Vec<(String, String)> {
    let out = ulp_info(&["-p", &pid.to_string(), "--json"]);
    out.expect_code(0, "ulp-info -p");
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    json["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn apply(pid: u32, args: &[&str]) -> Value {
    let mut all = vec!["--json", "--timeout", "30"];
    all.extend_from_slice(args);
    let out = ulp_apply(pid, &all);
    out.expect_code(0, &format!("ulp-apply {args:?}"));
    serde_json::from_str(&out.stdout).unwrap()
}

fn revert(pid: u32, which: &str) {
    ulp_apply(pid, &["--revert", which]).expect_code(0, &format!("ulp-apply --revert {which}"));
}

#[test]
fn stacked_patches_with_the_middle_one_reverted() {
    for flavor in [Flavor::PIE_O2, Flavor::PIE_O2_CET, Flavor::NO_PIE_O0] {
        let mut s = Session::start("global_fn", flavor);
        let second = build(&s, "new2");
        let pid = s.pid();
        assert_eq!(s.ask("10"), ORIGINAL);
        let p1 = apply(pid, &[s.patch.to_str().unwrap()]);
        assert_eq!(s.ask("10"), FIRST);
        let p2 = apply(pid, &[second.to_str().unwrap()]);
        assert_eq!(s.ask("10"), SECOND, "{flavor:?}: the later patch runs");
        // Applying the same patch twice is still refused.
        let again = ulp_apply(pid, &[&s.patch]);
        again
            .expect_code(2, "the same patch again")
            .expect_one_error_line();
        assert!(again.stderr.contains("already applied"), "{}", again.stderr);

        revert(pid, p1["id"].as_str().unwrap());
        assert_eq!(s.ask("10"), SECOND, "{flavor:?}: after reverting the first");
        assert_eq!(listed(pid).len(), 1);
        revert(pid, p2["id"].as_str().unwrap());
        assert_eq!(s.ask("10"), ORIGINAL, "{flavor:?}: after reverting both");

        // The other order: the top one first.
        apply(pid, &[s.patch.to_str().unwrap()]);
        apply(pid, &[second.to_str().unwrap()]);
        s.revert();
        assert_eq!(s.ask("10"), FIRST, "{flavor:?}: after reverting the second");
        s.revert();
        assert_eq!(s.ask("10"), ORIGINAL);
        assert!(listed(pid).is_empty());
        s.target.assert_alive();
    }
}

#[test]
fn replace_swaps_two_patches_for_a_cumulative_one() {
    let mut s = Session::start("global_fn", Flavor::PIE_O2);
    let second = build(&s, "new2");
    let cumulative = build(&s, "new3");
    let pid = s.pid();
    apply(pid, &[s.patch.to_str().unwrap()]);
    apply(pid, &[second.to_str().unwrap()]);
    assert_eq!(s.ask("10"), SECOND);
    let old: Vec<String> = listed(pid).into_iter().map(|(id, _)| id).collect();
    let report = apply(pid, &["--replace", cumulative.to_str().unwrap()]);
    assert_eq!(report["replaced"], serde_json::json!(old), "{report}");
    assert!(report["stop_us"].as_u64().is_some(), "one commit: {report}");
    assert_eq!(s.ask("10"), CUMULATIVE);
    let now = listed(pid);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].1, "global_fn-new3");
    s.revert();
    assert_eq!(s.ask("10"), ORIGINAL);
    s.target.assert_alive();
}

#[test]
fn apply_all_patches_three_processes_of_one_binary() {
    let mut s = Session::start("global_fn", Flavor::PIE_O2);
    let mut others = [Target::spawn(&s.exe), Target::spawn(&s.exe)];
    assert_eq!(s.ask("10"), ORIGINAL);
    for t in &mut others {
        assert_eq!(t.ask("10"), ORIGINAL);
    }
    let out = ulp_tests::run(
        std::process::Command::new(ulp_tests::tool("ulp-apply"))
            .arg("--all")
            .arg(&s.exe)
            .arg(&s.patch),
    );
    out.expect_code(0, "ulp-apply --all");
    assert!(
        out.stdout.contains("3 applied, 0 refused, 0 failed"),
        "{}",
        out.stdout
    );
    assert_eq!(s.ask("10"), FIRST);
    for t in &mut others {
        assert_eq!(t.ask("10"), FIRST);
        assert!(out.stdout.contains(&format!("{}: applied", t.pid())));
    }
}

//! The patch lifecycle against real processes: stacked patches of one function, revert in any
//! order, `--replace`, `--all`, and `ulp-info -p` showing which patch each function runs.

mod common;

use std::io::{Read, Seek, SeekFrom};

use common::{compile, replace_function, return_constant, run, write_patch_file, Target};
use serde_json::Value;
use ulp_runtime::Patch;

const APPLY: &str = env!("CARGO_BIN_EXE_ulp-apply");
const INFO: &str = env!("CARGO_BIN_EXE_ulp-info");

/// `answer` returning `value`, written to `dir/file`; (path, id).
fn constant_patch(
    dir: &std::path::Path,
    exe: &std::path::Path,
    file: &str,
    value: u32,
) -> (String, String) {
    let mut patch = replace_function(exe, "answer", return_constant(value));
    let (path, id) = write_patch_file(dir, file, &mut patch);
    (path.to_str().unwrap().to_string(), id)
}

/// One patch replacing both `a` and `b` (merged from two single-function patches).
fn merge(mut a: Patch, b: Patch) -> Patch {
    let base = a.sections.len();
    a.meta.functions.extend(b.meta.functions);
    a.sections.extend(b.sections);
    a.symbols.extend(b.symbols.into_iter().map(|mut s| {
        s.section += base;
        s
    }));
    a.meta.id = format!("{}m", &a.meta.id[..15]);
    a
}

fn apply_ok(pid: &str, args: &[&str]) -> Value {
    let mut all = vec!["-p", pid, "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run(APPLY, &all);
    assert_eq!(code, 0, "ulp-apply {args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn info(pid: &str) -> Value {
    let (code, out, err) = run(INFO, &["-p", pid, "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn ids(pid: &str) -> Vec<String> {
    info(pid)["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

fn read_mem(pid: i32, address: u64, len: usize) -> Vec<u8> {
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    mem.seek(SeekFrom::Start(address)).unwrap();
    let mut bytes = vec![0; len];
    mem.read_exact(&mut bytes).unwrap();
    bytes
}

#[test]
fn stacked_patches_revert_middle_then_top() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let (p1, id1) = constant_patch(dir.path(), &exe, "p1.ulp", 10);
    let (p2, id2) = constant_patch(dir.path(), &exe, "p2.ulp", 20);

    apply_ok(&pid, &[&p1]);
    assert_eq!(target.ask("5"), "10");
    apply_ok(&pid, &[&p2]);
    assert_eq!(target.ask("5"), "20");
    let listed = info(&pid);
    assert_eq!(listed["active"][0]["id"], id2.as_str(), "{listed}");
    let (_, text, _) = run(INFO, &["-p", &pid]);
    assert!(text.contains(&format!("(runs #2 {id2})")), "{text}");

    // The same patch again is still "already applied", also under a later one.
    let (code, _, err) = run(APPLY, &["-p", &pid, &p1]);
    assert_eq!(code, 2);
    assert!(err.contains("already applied"), "{err}");

    // Revert the bottom one: the function keeps running p2.
    let (code, _, err) = run(APPLY, &["-p", &pid, "--revert", &id1]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(target.ask("5"), "20");
    assert_eq!(ids(&pid), vec![id2.clone()]);

    let (code, _, err) = run(APPLY, &["-p", &pid, "--revert", &id2]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(target.ask("5"), "6");
    assert!(ids(&pid).is_empty());
    assert!(target.alive());
}

#[test]
fn stacked_patches_revert_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let (p1, id1) = constant_patch(dir.path(), &exe, "p1.ulp", 10);
    let (p2, id2) = constant_patch(dir.path(), &exe, "p2.ulp", 20);
    let (p3, id3) = constant_patch(dir.path(), &exe, "p3.ulp", 30);

    // Reverse order: top first.
    apply_ok(&pid, &[&p1]);
    apply_ok(&pid, &[&p2]);
    assert_eq!(run(APPLY, &["-p", &pid, "--revert", &id2]).0, 0);
    assert_eq!(target.ask("5"), "10");
    assert_eq!(run(APPLY, &["-p", &pid, "--revert", &id1]).0, 0);
    assert_eq!(target.ask("5"), "6");

    // Three deep: the middle, then the top, then the bottom.
    apply_ok(&pid, &[&p1]);
    apply_ok(&pid, &[&p2]);
    apply_ok(&pid, &[&p3]);
    assert_eq!(target.ask("5"), "30");
    assert_eq!(run(APPLY, &["-p", &pid, "--revert", &id2]).0, 0);
    assert_eq!(target.ask("5"), "30");
    assert_eq!(run(APPLY, &["-p", &pid, "--revert", &id3]).0, 0);
    assert_eq!(target.ask("5"), "10");
    assert_eq!(run(APPLY, &["-p", &pid, "--revert", &id1]).0, 0);
    assert_eq!(target.ask("5"), "6");
    assert!(ids(&pid).is_empty());
    assert!(!common::maps_text(target.pid()).contains("rwxp"));
    assert!(target.alive());
}

#[test]
fn replace_swaps_earlier_patches_for_a_cumulative_one_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let (p1, id1) = constant_patch(dir.path(), &exe, "p1.ulp", 10);
    // p2 redirects `answer` and `busy` (never called here); the cumulative patch only `answer`.
    let mut p2 = merge(
        replace_function(&exe, "answer", return_constant(20)),
        replace_function(&exe, "busy", vec![0xc3]),
    );
    let (p2, id2) = write_patch_file(dir.path(), "p2.ulp", &mut p2);
    let (new, new_id) = constant_patch(dir.path(), &exe, "new.ulp", 99);
    apply_ok(&pid, &[&p1]);
    apply_ok(&pid, &[p2.to_str().unwrap()]);
    assert_eq!(target.ask("5"), "20");
    let busy = info(&pid)["patches"][1]["functions"][1].clone();
    assert_eq!(busy["name"], "busy");
    let jump_at = busy["jump_at"].as_u64().unwrap();
    let original = ulp_runtime::hash::unhex(busy["saved"].as_str().unwrap()).unwrap();
    assert_ne!(read_mem(target.pid(), jump_at, original.len()), original);
    let regions: Vec<u64> = info(&pid)["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["region_start"].as_u64().unwrap())
        .collect();

    let report = apply_ok(&pid, &["--replace", &new]);
    assert!(report["stop_us"].as_u64().is_some(), "{report}");
    assert_eq!(
        report["replaced"],
        serde_json::json!([id1, id2]),
        "{report}"
    );
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    assert_eq!(target.ask("5"), "99");
    assert_eq!(ids(&pid), vec![new_id.clone()]);
    assert_eq!(read_mem(target.pid(), jump_at, original.len()), original);
    let maps = common::maps_text(target.pid());
    for start in regions {
        assert!(
            !maps.contains(&format!("{start:x}-")),
            "old region {start:#x} unmapped:\n{maps}"
        );
    }
    // The cumulative patch reverts to the original program.
    assert_eq!(run(APPLY, &["-p", &pid, "--revert"]).0, 0);
    assert_eq!(target.ask("5"), "6");
    assert!(target.alive());
}

#[test]
fn apply_all_patches_every_process_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut targets: Vec<Target> = (0..3).map(|_| Target::start(&exe, &[])).collect();
    let (p1, _) = constant_patch(dir.path(), &exe, "p1.ulp", 10);
    let (code, out, err) = run(APPLY, &["--all", exe.to_str().unwrap(), &p1]);
    assert_eq!(code, 0, "{out}{err}");
    for t in &mut targets {
        assert_eq!(t.ask("5"), "10");
        assert!(out.contains(&format!("{}: applied", t.pid())), "{out}");
    }
    assert!(out.ends_with("3 applied, 0 refused, 0 failed\n"), "{out}");

    // Again: every one refuses (already applied), so exit 2 with one error line and a summary.
    let (code, out, err) = run(APPLY, &["--all", exe.to_str().unwrap(), &p1, "--json"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["summary"]["refused"], 3, "{json}");
    assert_eq!(json["results"].as_array().unwrap().len(), 3);
    assert_eq!(json["results"][0]["result"], "refused");

    // A binary nothing runs is an error.
    let (code, _, err) = run(APPLY, &["--all", INFO, &p1]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no process"), "{err}");
}

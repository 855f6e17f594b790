//! `ulp-apply` and `ulp-info` as a user runs them, against real processes.

mod common;

use common::{
    compile, maps_text, replace_function, return_constant, run, write_patch_file, Target,
};

const APPLY: &str = env!("CARGO_BIN_EXE_ulp-apply");
const INFO: &str = env!("CARGO_BIN_EXE_ulp-info");

#[test]
fn apply_list_refuse_twice_and_revert_from_separate_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let mut patch = replace_function(&exe, "answer", return_constant(1000));
    let (file, id) = write_patch_file(dir.path(), "fix.ulp", &mut patch);
    let file = file.to_str().unwrap();

    let (code, out, err) = run(APPLY, &["-p", &pid, file, "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["stop_us"].as_u64().is_some());
    assert_eq!(report["id"], id.as_str());
    assert_eq!(target.ask("5"), "1000");
    assert!(!maps_text(target.pid()).contains("rwxp"), "no RWX mapping");

    let (code, out, _) = run(INFO, &["-p", &pid, "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["patches"][0]["id"], id.as_str());
    assert_eq!(listed["patches"][0]["functions"][0]["name"], "answer");

    let (code, _, err) = run(APPLY, &["-p", &pid, file]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: ") && err.contains("already applied"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    let (code, _, err) = run(APPLY, &["-p", &pid, "--revert", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(target.ask("5"), "6");
    let (_, out, _) = run(INFO, &["-p", &pid]);
    assert!(out.contains("no patches"), "{out}");
}

#[test]
fn process_blocked_in_read_resumes_without_eintr() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    // Target::start leaves the program blocked in read() on an empty pipe.
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let mut patch = replace_function(&exe, "answer", return_constant(77));
    let (file, _) = write_patch_file(dir.path(), "fix.ulp", &mut patch);
    let (code, _, err) = run(APPLY, &["-p", &pid, file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // A read() that returned EINTR would have printed "EINTR" before this answer.
    assert_eq!(target.ask("1"), "77");
    let (code, _, err) = run(APPLY, &["-p", &pid, "--revert"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(target.ask("1"), "2");
}

#[test]
fn pid_that_does_not_exist_is_an_error() {
    let (code, _, err) = run(APPLY, &["-p", "999999999", "--revert"]);
    assert_eq!(code, 1);
    assert_eq!(err, "error: process 999999999 does not exist\n");
}

#[test]
fn busy_function_is_refused_after_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &["busy"]);
    let pid = target.pid().to_string();
    let before = maps_text(target.pid());
    let mut patch = replace_function(&exe, "busy", vec![0xc3]);
    let (file, _) = write_patch_file(dir.path(), "fix.ulp", &mut patch);
    let (code, _, err) = run(
        APPLY,
        &["-p", &pid, file.to_str().unwrap(), "--timeout", "0.3"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("function 'busy' is in use by thread") && err.contains("gave up after"),
        "{err}"
    );
    assert_eq!(
        maps_text(target.pid()),
        before,
        "the prepared region is gone"
    );
    assert_eq!(target.ask("41"), "42");
    assert!(target.alive());
}

#[test]
fn patch_built_from_other_sources_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let mut patch = replace_function(&exe, "answer", return_constant(3));
    patch.meta.functions[0].original_hash = "00".repeat(32);
    let (file, _) = write_patch_file(dir.path(), "fix.ulp", &mut patch);
    let (code, _, err) = run(APPLY, &["-p", &pid, file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        format!("error: function 'answer' in process {pid} does not match the patch (built from other sources?)\n")
    );
    assert_eq!(target.ask("1"), "2");
}

#[test]
fn second_patch_of_a_patched_function_stacks() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let mut first = replace_function(&exe, "answer", return_constant(10));
    let mut second = replace_function(&exe, "answer", return_constant(20));
    let (first, _) = write_patch_file(dir.path(), "a.ulp", &mut first);
    let (second, _) = write_patch_file(dir.path(), "b.ulp", &mut second);
    assert_eq!(run(APPLY, &["-p", &pid, first.to_str().unwrap()]).0, 0);
    let (code, _, err) = run(APPLY, &["-p", &pid, second.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(target.ask("1"), "20");
}

#[test]
fn dry_run_leaves_the_process_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let before = maps_text(target.pid());
    let mut patch = replace_function(&exe, "answer", return_constant(9));
    let (file, _) = write_patch_file(dir.path(), "fix.ulp", &mut patch);
    let (code, out, err) = run(
        APPLY,
        &["-p", &pid, file.to_str().unwrap(), "--dry-run", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(maps_text(target.pid()), before);
    assert_eq!(target.ask("1"), "2");
}

#[test]
fn non_pie_executable_is_patched_too() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &["-no-pie", "-fno-pie"]);
    let mut target = Target::start(&exe, &[]);
    let pid = target.pid().to_string();
    let mut patch = replace_function(&exe, "answer", return_constant(55));
    let (file, _) = write_patch_file(dir.path(), "fix.ulp", &mut patch);
    let (code, _, err) = run(APPLY, &["-p", &pid, file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(target.ask("1"), "55");
    assert_eq!(run(APPLY, &["-p", &pid, "--revert"]).0, 0);
    assert_eq!(target.ask("1"), "2");
}

#[test]
fn info_describes_a_patch_file() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut patch = replace_function(&exe, "answer", return_constant(1));
    let (file, id) = write_patch_file(dir.path(), "fix.ulp", &mut patch);
    let (code, out, _) = run(INFO, &[file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("answer"), "{out}");
    let (code, out, _) = run(INFO, &[file.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["meta"]["id"], id.as_str());
}

#[test]
fn terminated_apply_leaves_the_target_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), &[]);
    let mut target = Target::start(&exe, &["busy"]);
    let pid = target.pid().to_string();
    let before = maps_text(target.pid());
    let mut patch = replace_function(&exe, "busy", vec![0xc3]);
    let (file, _) = write_patch_file(dir.path(), "fix.ulp", &mut patch);
    // The busy thread never leaves `busy`, so ulp-apply waits (breakpoint on its return address
    // inserted, other threads stopped) until SIGTERM arrives mid-wait.
    let apply = std::process::Command::new(APPLY)
        .args(["-p", &pid, file.to_str().unwrap(), "--timeout", "30"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(apply.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = apply.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted by a signal"), "{err}");
    assert_eq!(
        maps_text(target.pid()),
        before,
        "the prepared region is gone"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        !status.contains("\nState:\tt"),
        "left traced-stopped:\n{status}"
    );
    assert_eq!(target.ask("41"), "42");
    assert!(target.alive());
}

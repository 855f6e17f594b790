//! Stopping and safety against real processes (issue 4, items 1 and 2): threads created while we
//! attach, the stack check by unwinding, threads stopped inside system calls, signals that arrive
//! during an apply, and 8 threads calling the patched function. The target is
//! `tests/safety/target.c`; the patches are built by hand (`common`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{replace_function, return_constant, Target};
use ulp_apply::{apply, revert, ApplyOptions, Error};

/// Compile `tests/safety/target.c` into `dir` with extra `flags`.
fn compile_target(dir: &Path, flags: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/safety/target.c");
    let out = dir.join("target");
    let status = Command::new("gcc")
        .args(["-O0", "-g", "-pthread"])
        .args(flags)
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed");
    out
}

fn numbers(answer: &str) -> Vec<i64> {
    answer
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// No thread of `pid` is traced any more: every thread, also those created while we worked, was
/// released.
fn assert_untraced(pid: i32) {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = entry.unwrap().path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map(|t| t.trim().to_string());
        assert_eq!(
            tracer.as_deref(),
            Some("0"),
            "{} is still traced",
            path.display()
        );
    }
}

fn options(timeout_ms: u64) -> ApplyOptions {
    ApplyOptions {
        timeout: Duration::from_millis(timeout_ms),
        ..ApplyOptions::default()
    }
}

#[test]
fn threads_created_while_applying_and_reverting_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &[]);
    let mut target = Target::start(&exe, &["churn"]);
    let patch = replace_function(&exe, "answer", return_constant(12));
    for round in 0..10 {
        apply(target.pid(), &patch, &ApplyOptions::default())
            .unwrap_or_else(|e| panic!("apply {round}: {e}"));
        assert_untraced(target.pid());
        assert_eq!(target.ask("1"), "12", "after apply {round}");
        revert(target.pid(), None, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("revert {round}: {e}"));
        assert_untraced(target.pid());
        assert_eq!(target.ask("1"), "2", "after revert {round}");
    }
    assert!(target.alive());
}

#[test]
fn threads_created_by_a_thread_that_runs_while_traced_are_followed() {
    // The busy thread runs (traced) to the return-address breakpoint out of spawn_step(), creating
    // a thread on its way: that thread is attached by PTRACE_O_TRACECLONE and stopped at once.
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &[]);
    let mut target = Target::start(&exe, &["spawn", "churn"]);
    assert_eq!(target.ask("spawn"), "1");
    let patch = replace_function(&exe, "spawn_step", return_constant(12));
    for round in 0..10 {
        apply(target.pid(), &patch, &ApplyOptions::default())
            .unwrap_or_else(|e| panic!("apply {round}: {e}"));
        assert_untraced(target.pid());
        assert_eq!(target.ask("spawn"), "12", "after apply {round}");
        revert(target.pid(), None, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("revert {round}: {e}"));
        assert_untraced(target.pid());
        assert_eq!(target.ask("spawn"), "1", "after revert {round}");
    }
    assert_eq!(target.ask("1"), "2");
    assert!(target.alive());
}

#[test]
fn every_thread_of_a_c_program_unwinds_to_its_outermost_frame() {
    use ulp_apply::memory::Memory;
    use ulp_apply::ptrace::{get_regs, AllThreads};
    use ulp_apply::unwind::Unwinder;

    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &["-O2"]);
    let target = Target::start(&exe, &["stale", "sleep", "futex", "deep"]);
    std::thread::sleep(Duration::from_millis(100));
    let pid = target.pid();
    let memory = Memory::open(pid).unwrap();
    let maps = ulp_apply::maps::read(pid).unwrap();
    let threads = AllThreads::stop(pid).unwrap();
    let mut unwinder = Unwinder::new(pid);
    assert_eq!(threads.threads.len(), 7);
    for thread in &threads.threads {
        let regs = get_regs(thread.tid).unwrap();
        let frames = unwinder.unwind(&regs, &maps, &memory);
        assert_eq!(
            frames.stopped_at, None,
            "thread {}: {:x?}",
            thread.tid, frames.pcs
        );
        assert!(frames.pcs.len() >= 3, "{:x?}", frames.pcs);
    }
    threads.resume();
}

#[test]
fn stale_pointer_into_the_replaced_function_does_not_block_the_apply() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &[]);
    let mut target = Target::start(&exe, &["stale"]);
    std::thread::sleep(Duration::from_millis(50));
    let patch = replace_function(&exe, "answer", return_constant(12));
    let report = apply(target.pid(), &patch, &options(1000)).unwrap();
    assert_eq!(report.attempts, 1, "no thread was found busy");
    assert_eq!(target.ask("1"), "12");
    revert(target.pid(), None, Duration::from_secs(5)).unwrap();
    assert_eq!(target.ask("1"), "2");
    assert!(target.alive());
}

#[test]
fn thread_inside_the_replaced_function_deep_in_libc_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &[]);
    let mut target = Target::start(&exe, &["deep"]);
    std::thread::sleep(Duration::from_millis(50));
    let before = common::maps_text(target.pid());
    let patch = replace_function(&exe, "sorter", return_constant(12));
    let err = apply(target.pid(), &patch, &options(600)).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("sorter") && message.contains("in use by thread"),
        "{message}"
    );
    assert_eq!(common::maps_text(target.pid()), before);
    assert_eq!(target.ask("41"), "42");
    assert!(target.alive());
}

/// Apply and revert `rounds` times, pausing `pause` after each step.
fn apply_and_revert(target: &mut Target, exe: &Path, rounds: usize, pause: Duration) {
    let patch = replace_function(exe, "answer", return_constant(12));
    for _ in 0..rounds {
        apply(target.pid(), &patch, &ApplyOptions::default()).unwrap();
        std::thread::sleep(pause);
        assert_eq!(target.ask("1"), "12");
        revert(target.pid(), None, Duration::from_secs(5)).unwrap();
        std::thread::sleep(pause);
        assert_eq!(target.ask("1"), "2");
    }
}

#[test]
fn thread_in_nanosleep_sleeps_its_full_time_without_eintr() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &[]);
    let mut target = Target::start(&exe, &["sleep"]);
    std::thread::sleep(Duration::from_millis(50));
    apply_and_revert(&mut target, &exe, 6, Duration::from_millis(70));
    std::thread::sleep(Duration::from_millis(700));
    let [sleeps, shortest_ms, eintr] = numbers(&target.ask("sleep"))[..] else {
        panic!("bad answer")
    };
    assert!(sleeps >= 2, "{sleeps} sleeps");
    assert_eq!(eintr, 0, "nanosleep returned EINTR");
    assert!(shortest_ms >= 300, "a sleep ended early: {shortest_ms} ms");
    assert!(target.alive());
}

#[test]
fn thread_in_futex_wait_is_neither_woken_early_nor_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &[]);
    let mut target = Target::start(&exe, &["futex"]);
    std::thread::sleep(Duration::from_millis(50));
    apply_and_revert(&mut target, &exe, 6, Duration::from_millis(70));
    std::thread::sleep(Duration::from_millis(700));
    let [wakeups, early, eintr, timeouts, shortest_ms] = numbers(&target.ask("futex"))[..] else {
        panic!("bad answer")
    };
    assert!(wakeups >= 5, "{wakeups} wake-ups");
    assert!(timeouts >= 2, "{timeouts} timeouts");
    assert_eq!(early, 0, "a futex wait ended without a wake-up");
    assert_eq!(eintr, 0, "a futex wait returned EINTR");
    assert!(
        shortest_ms >= 300,
        "a timed wait ended early: {shortest_ms} ms"
    );
    assert!(target.alive());
}

#[test]
fn signals_sent_during_apply_and_revert_are_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &[]);
    let mut target = Target::start(&exe, &["signals", "hammer8"]);
    let pid = target.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent_usr1, sent_rt) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sender = {
        let (stop, sent_usr1, sent_rt) = (stop.clone(), sent_usr1.clone(), sent_rt.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Realtime signals queue (each is delivered); standard ones coalesce while pending.
                if unsafe { nix::libc::kill(pid, nix::libc::SIGRTMIN()) } == 0 {
                    sent_rt.fetch_add(1, Ordering::Relaxed);
                }
                if unsafe { nix::libc::kill(pid, nix::libc::SIGUSR1) } == 0 {
                    sent_usr1.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    apply_and_revert(&mut target, &exe, 5, Duration::from_millis(10));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let (sent_usr1, sent_rt) = (
        sent_usr1.load(Ordering::Relaxed) as i64,
        sent_rt.load(Ordering::Relaxed) as i64,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let (usr1, rt) = loop {
        let [usr1, rt] = numbers(&target.ask("signals"))[..] else {
            panic!("bad answer")
        };
        if rt >= sent_rt || Instant::now() > deadline {
            break (usr1, rt);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(sent_rt > 50, "{sent_rt} sent");
    assert_eq!(
        rt, sent_rt,
        "every realtime signal is delivered exactly once"
    );
    assert!(
        usr1 >= 1 && usr1 <= sent_usr1,
        "{usr1} of {sent_usr1} SIGUSR1"
    );
    assert!(target.alive());
}

#[test]
fn eight_threads_hammering_the_patched_function_switch_to_new_code_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_target(dir.path(), &[]);
    let mut target = Target::start(&exe, &["hammer8"]);
    let patch = replace_function(&exe, "answer", return_constant(12));
    let old = ["2"; 8].join(" ");
    let new = ["12"; 8].join(" ");
    assert_eq!(target.ask("hammer"), old);
    for _ in 0..3 {
        let report = apply(target.pid(), &patch, &ApplyOptions::default()).unwrap();
        assert!(report.stop_us.is_some());
        assert_eq!(target.ask("hammer"), new, "after apply");
        revert(target.pid(), None, Duration::from_secs(5)).unwrap();
        assert_eq!(target.ask("hammer"), old, "after revert");
    }
    assert!(target.alive());
}

//! Stopping and resuming the target's threads with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`.
//!
//! Every stop is held by a guard whose `Drop` detaches, so any error path resumes the target. A thread
//! can report a signal-delivery-stop for a real signal instead of our interrupt stop; that signal is
//! remembered and delivered when the thread is resumed, never swallowed.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::libc::user_regs_struct;
use nix::sys::ptrace;
use nix::unistd::Pid;

use crate::error::{failed, Result};

/// How a thread came to a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Our interrupt, a group-stop or another ptrace event stop: no signal to deliver.
    Event,
    /// A signal-delivery-stop: this signal (a raw number: realtime signals included) must be
    /// delivered when the thread resumes.
    Signal(i32),
}

/// One traced, stopped thread.
#[derive(Debug)]
pub struct Thread {
    pub tid: i32,
    /// The kind of stop the thread is in now.
    pub stop: Stop,
    /// Signals taken out of the thread's way while we worked, in order; raised again after
    /// detaching (each one: realtime signals queue, so none may be dropped).
    pub deferred: Vec<i32>,
}

/// The threads of `pid`, from `/proc/PID/task`.
pub fn thread_ids(pid: i32) -> Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            failed!("process {pid} does not exist")
        } else {
            failed!("cannot list {dir}: {e}")
        }
    })?;
    let mut tids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Seize and interrupt `tid`; `Ok(false)` if the thread no longer exists. With `follow_clones`,
/// threads it creates from now on are traced too (`PTRACE_O_TRACECLONE`): each starts in a
/// `PTRACE_EVENT_STOP`, and the creator reports a `PTRACE_EVENT_CLONE` stop naming it.
fn seize_and_interrupt(pid: i32, tid: i32, follow_clones: bool) -> Result<bool> {
    let p = Pid::from_raw(tid);
    let options = if follow_clones {
        ptrace::Options::PTRACE_O_TRACECLONE
    } else {
        ptrace::Options::empty()
    };
    match ptrace::seize(p, options) {
        Ok(()) => {}
        Err(Errno::ESRCH) => return Ok(false),
        Err(Errno::EPERM) => {
            // Already ours: a thread attached automatically when a traced thread created it.
            if ptrace::interrupt(p).is_ok() {
                return Ok(true);
            }
            // Exited, not yet released by the kernel: the kernel refuses to attach to it.
            if exiting(pid, tid) {
                return Ok(false);
            }
            return Err(failed!(
                "cannot trace thread {tid} of process {pid}: {} (traced by another program?)",
                Errno::EPERM
            ));
        }
        Err(e) => return Err(failed!("cannot trace thread {tid} of process {pid}: {e}")),
    }
    match ptrace::interrupt(p) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => {
            let _ = ptrace::detach(p, None);
            Err(failed!(
                "cannot interrupt thread {tid} of process {pid}: {e}"
            ))
        }
    }
}

/// Collect the exit of a traced thread that is gone, waiting a little for it to be reported.
fn reap(tid: i32) {
    let deadline = Instant::now() + Duration::from_millis(100);
    while Instant::now() < deadline {
        match wait(tid, true) {
            Ok(Status::StillAlive) | Err(Errno::EINTR) => {
                std::thread::sleep(Duration::from_micros(100))
            }
            _ => return,
        }
    }
}

/// Thread `tid` is gone or exiting (state `Z` or `X` in `/proc/PID/task/TID/stat`).
fn exiting(pid: i32, tid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
        return true;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('Z' | 'X' | 'x') | None)
}

/// What `waitpid` reported for one thread. Decoded here rather than with `nix::sys::wait`, which
/// fails with `EINVAL` on a stop for a realtime signal (and the stop would be lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// `WNOHANG` and nothing to report.
    StillAlive,
    /// Exited or killed.
    Gone,
    /// A signal-delivery-stop for this signal.
    Stopped(i32),
    /// A ptrace event stop (`PTRACE_EVENT_*`, including the `PTRACE_EVENT_STOP` of an interrupt or
    /// a group-stop), or a syscall stop.
    Event(i32),
}

fn wait(tid: i32, nohang: bool) -> std::result::Result<Status, Errno> {
    let mut status = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    let r = unsafe { libc::waitpid(tid, &mut status, flags) };
    if r < 0 {
        return Err(Errno::last());
    }
    if r == 0 {
        return Ok(Status::StillAlive);
    }
    Ok(if libc::WIFSTOPPED(status) {
        let event = status >> 16;
        let sig = libc::WSTOPSIG(status);
        if event != 0 || sig == libc::SIGTRAP | 0x80 {
            Status::Event(event)
        } else {
            Status::Stopped(sig)
        }
    } else if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        Status::Gone
    } else {
        Status::StillAlive
    })
}

/// `PTRACE_CONT`, `PTRACE_SINGLESTEP` or `PTRACE_DETACH` with a raw signal number (0: none).
fn request(request: libc::c_uint, tid: i32, sig: i32) -> std::result::Result<(), Errno> {
    let r = unsafe {
        libc::ptrace(
            request,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            sig as libc::c_long as *mut libc::c_void,
        )
    };
    Errno::result(r).map(drop)
}

/// The signal a stop owes the thread (0: none).
fn owed(stop: Stop) -> i32 {
    match stop {
        Stop::Signal(sig) => sig,
        Stop::Event => 0,
    }
}

/// The thread created by `tid` if `status` is its `PTRACE_EVENT_CLONE` stop.
fn clone_child(tid: i32, status: Status) -> Option<i32> {
    match status {
        Status::Event(libc::PTRACE_EVENT_CLONE) => {
            let child = ptrace::getevent(Pid::from_raw(tid)).ok()?;
            i32::try_from(child).ok().filter(|&c| c > 0)
        }
        _ => None,
    }
}

/// Wait until a seized, interrupted thread stops; `None` if it exited meanwhile. A thread it
/// created (reported by a `PTRACE_EVENT_CLONE` stop) is added to `children`.
fn wait_for_stop(pid: i32, tid: i32, children: &mut Vec<i32>) -> Result<Option<Stop>> {
    loop {
        match wait(tid, false) {
            Ok(Status::Stopped(sig)) => return Ok(Some(Stop::Signal(sig))),
            Ok(status @ Status::Event(_)) => {
                children.extend(clone_child(tid, status));
                return Ok(Some(Stop::Event));
            }
            Ok(Status::Gone) => return Ok(None),
            Ok(Status::StillAlive) | Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return Ok(None),
            Err(e) => return Err(failed!("waiting for thread {tid} of process {pid}: {e}")),
        }
    }
}

/// Let a stopped thread continue (still traced), delivering the signal it is owed, if any.
fn resume_with_owed_signal(thread: &mut Thread) -> Result<()> {
    match request(libc::PTRACE_CONT, thread.tid, owed(thread.stop)) {
        Ok(()) | Err(Errno::ESRCH) => {
            thread.stop = Stop::Event;
            Ok(())
        }
        Err(e) => Err(failed!("cannot resume thread {}: {e}", thread.tid)),
    }
}

/// Resume a thread for good, delivering whatever signal it is owed.
fn release(pid: i32, thread: &Thread) {
    let tid = thread.tid;
    if request(libc::PTRACE_DETACH, tid, owed(thread.stop)) == Err(Errno::ESRCH) {
        // Not in a ptrace-stop (an error path left it running) or gone: stop it to detach it, or
        // reap it. Bounded, so that a thread that never stops cannot hang us.
        if ptrace::interrupt(Pid::from_raw(tid)).is_ok() {
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline {
                match wait(tid, true) {
                    Ok(Status::StillAlive) | Err(Errno::EINTR) => {
                        std::thread::sleep(Duration::from_micros(100))
                    }
                    Ok(Status::Stopped(sig)) => {
                        let _ = request(libc::PTRACE_DETACH, tid, sig);
                        break;
                    }
                    Ok(Status::Event(_)) => {
                        let _ = request(libc::PTRACE_DETACH, tid, 0);
                        break;
                    }
                    Ok(Status::Gone) | Err(_) => break,
                }
            }
        } else {
            reap(tid);
        }
    }
    for &sig in &thread.deferred {
        // Process-directed: the kernel hands it to a thread that does not block it.
        unsafe { libc::kill(pid, sig) };
    }
}

pub fn get_regs(tid: i32) -> Result<user_regs_struct> {
    ptrace::getregs(Pid::from_raw(tid))
        .map_err(|e| failed!("cannot read the registers of thread {tid}: {e}"))
}

pub fn set_regs(tid: i32, regs: user_regs_struct) -> Result<()> {
    ptrace::setregs(Pid::from_raw(tid), regs)
        .map_err(|e| failed!("cannot set the registers of thread {tid}: {e}"))
}

/// One stopped thread of the target, resumed (with its registers restored) when dropped.
pub struct StoppedThread {
    pub pid: i32,
    pub thread: Thread,
    /// The registers at the stop, put back before detaching.
    pub saved: user_regs_struct,
}

impl StoppedThread {
    /// Stop one thread: the first of `pid`'s threads that can be stopped (the main thread first).
    pub fn stop_any(pid: i32) -> Result<StoppedThread> {
        let mut tids = thread_ids(pid)?;
        tids.sort_by_key(|&t| t != pid);
        for tid in tids {
            if !seize_and_interrupt(pid, tid, false)? {
                continue;
            }
            let Some(stop) = wait_for_stop(pid, tid, &mut Vec::new())? else {
                continue;
            };
            let thread = Thread {
                tid,
                stop,
                deferred: Vec::new(),
            };
            let saved = match get_regs(tid) {
                Ok(regs) => regs,
                Err(e) => {
                    release(pid, &thread);
                    return Err(e);
                }
            };
            return Ok(StoppedThread { pid, thread, saved });
        }
        Err(failed!("process {pid} has no thread that can be stopped"))
    }

    /// Single-step once from the current registers and wait for the thread to stop again at
    /// `expected_rip`. Signals that arrive meanwhile are deferred, never lost.
    pub fn step_to(&mut self, expected_rip: u64) -> Result<user_regs_struct> {
        let tid = self.thread.tid;
        for _ in 0..64 {
            // A signal-delivery-stop we step from is taken out of the way; it is raised again later.
            if let Stop::Signal(sig) = self.thread.stop {
                if sig != libc::SIGTRAP {
                    self.thread.deferred.push(sig);
                    self.thread.stop = Stop::Event;
                }
            }
            request(libc::PTRACE_SINGLESTEP, tid, 0)
                .map_err(|e| failed!("cannot single-step thread {tid}: {e}"))?;
            let Some(stop) = wait_for_stop(self.pid, tid, &mut Vec::new())? else {
                return Err(failed!("thread {tid} of process {} exited", self.pid));
            };
            self.thread.stop = stop;
            let regs = get_regs(tid)?;
            if regs.rip == expected_rip {
                return Ok(regs);
            }
        }
        Err(failed!(
            "thread {tid} did not finish the injected system call"
        ))
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        let _ = ptrace::setregs(Pid::from_raw(self.thread.tid), self.saved);
        // The single-step trap is ours: do not deliver it.
        if self.thread.stop == Stop::Signal(libc::SIGTRAP) {
            self.thread.stop = Stop::Event;
        }
        release(self.pid, &self.thread);
    }
}

/// Every thread of the target, stopped; all resumed when dropped.
pub struct AllThreads {
    pub pid: i32,
    pub threads: Vec<Thread>,
    /// When the first thread was interrupted: the start of the stop window.
    pub since: Instant,
    /// Every thread id ever seen, so a thread that vanished is not chased again.
    known: Vec<i32>,
}

impl AllThreads {
    /// Seize and interrupt every thread, re-scanning `/proc/PID/task` until no new thread appears.
    pub fn stop(pid: i32) -> Result<AllThreads> {
        let mut all = AllThreads {
            pid,
            threads: Vec::new(),
            since: Instant::now(),
            known: Vec::new(),
        };
        all.catch_new()?;
        if all.threads.is_empty() {
            return Err(failed!("process {pid} has no threads left"));
        }
        Ok(all)
    }

    /// Seize and interrupt threads that appeared since the last scan, until the set is stable.
    pub fn catch_new(&mut self) -> Result<()> {
        let pid = self.pid;
        for _ in 0..100 {
            let new: Vec<i32> = thread_ids(pid)?
                .into_iter()
                .filter(|t| !self.known.contains(t))
                .collect();
            if new.is_empty() {
                return Ok(());
            }
            // On an error, every thread seized so far is still waited for and kept, so that the
            // guard releases it: a traced thread left behind would stay stopped for good.
            let mut error = None;
            let mut interrupted = Vec::new();
            for tid in new {
                self.known.push(tid);
                match seize_and_interrupt(pid, tid, true) {
                    Ok(true) => interrupted.push(tid),
                    Ok(false) => {}
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            // The interrupted threads are waited for like clone children; children they report
            // creating meanwhile are taken in by the same loop.
            let adopted = self.adopt(interrupted);
            if let Some(e) = error {
                return Err(e);
            }
            adopted?;
        }
        Err(failed!(
            "process {pid} keeps creating threads; cannot stop them all"
        ))
    }

    /// Take in threads that are traced and about to stop: threads we interrupted, and threads that
    /// traced threads created (`PTRACE_EVENT_CLONE`, traced already and starting stopped). Wait for
    /// each one's stop; a thread reported creating another before it stops is followed the same
    /// way.
    fn adopt(&mut self, mut children: Vec<i32>) -> Result<()> {
        let mut error = None;
        while let Some(tid) = children.pop() {
            if self.threads.iter().any(|t| t.tid == tid) {
                continue;
            }
            if !self.known.contains(&tid) {
                self.known.push(tid);
            }
            let stop = match wait_for_stop(self.pid, tid, &mut children) {
                Ok(Some(stop)) => stop,
                Ok(None) => continue,
                Err(e) => {
                    error.get_or_insert(e);
                    Stop::Event
                }
            };
            self.threads.push(Thread {
                tid,
                stop,
                deferred: Vec::new(),
            });
        }
        error.map_or(Ok(()), Err)
    }

    /// Let only the threads `tids` run for `burst` while every other thread stays stopped, then stop
    /// them again. A signal a thread was stopped for is delivered when it runs; threads that exit
    /// meanwhile are forgotten.
    pub fn run_only(&mut self, tids: &[i32], burst: Duration) -> Result<()> {
        let pid = self.pid;
        let mut running = Vec::new();
        for thread in self.threads.iter_mut().filter(|t| tids.contains(&t.tid)) {
            resume_with_owed_signal(thread)?;
            running.push(thread.tid);
        }
        std::thread::sleep(burst);
        let mut gone = Vec::new();
        let mut children = Vec::new();
        for tid in running {
            let stop = match ptrace::interrupt(Pid::from_raw(tid)) {
                Ok(()) => wait_for_stop(pid, tid, &mut children)?,
                Err(Errno::ESRCH) => {
                    // Exited: reap it if it is waiting for its tracer.
                    reap(tid);
                    None
                }
                Err(e) => return Err(failed!("cannot interrupt thread {tid}: {e}")),
            };
            match stop {
                Some(stop) => {
                    if let Some(thread) = self.threads.iter_mut().find(|t| t.tid == tid) {
                        thread.stop = stop;
                    }
                }
                None => gone.push(tid),
            }
        }
        self.threads.retain(|t| !gone.contains(&t.tid));
        self.adopt(children)
    }

    /// Resume the threads `tids` (delivering any signal they are owed) and wait until each stops on
    /// one of the `int3` breakpoints at `breakpoints`, or until `deadline`, after which those still
    /// running are interrupted. A thread that reaches a breakpoint reports `SIGTRAP` with `rip` just
    /// past it; the trap is ours, so it is not delivered, and `rip` is put back on the address.
    /// Other signals are delivered and the thread runs on. Threads that exit are forgotten.
    pub fn run_to_breakpoints(
        &mut self,
        tids: &[i32],
        breakpoints: &[u64],
        deadline: Instant,
    ) -> Result<()> {
        let mut running: Vec<i32> = Vec::new();
        for thread in self.threads.iter_mut().filter(|t| tids.contains(&t.tid)) {
            resume_with_owed_signal(thread)?;
            running.push(thread.tid);
        }
        let mut gone = Vec::new();
        let mut children = Vec::new();
        while !running.is_empty() {
            let past_deadline = Instant::now() >= deadline;
            let mut still = Vec::new();
            for tid in running {
                let p = Pid::from_raw(tid);
                if past_deadline {
                    match ptrace::interrupt(p) {
                        Ok(()) | Err(Errno::ESRCH) => {}
                        Err(e) => return Err(failed!("cannot interrupt thread {tid}: {e}")),
                    }
                }
                let Some(thread) = self.threads.iter_mut().find(|t| t.tid == tid) else {
                    continue;
                };
                match wait(tid, !past_deadline) {
                    Ok(Status::StillAlive) => still.push(tid),
                    Ok(Status::Gone) | Err(Errno::ECHILD) => gone.push(tid),
                    Ok(Status::Stopped(libc::SIGTRAP)) => {
                        let mut regs = get_regs(tid)?;
                        if breakpoints.contains(&regs.rip.wrapping_sub(1)) {
                            regs.rip -= 1;
                            set_regs(tid, regs)?;
                            thread.stop = Stop::Event;
                        } else if past_deadline {
                            thread.stop = Stop::Signal(libc::SIGTRAP);
                        } else {
                            thread.stop = Stop::Signal(libc::SIGTRAP);
                            resume_with_owed_signal(thread)?;
                            still.push(tid);
                        }
                    }
                    Ok(Status::Stopped(sig)) => {
                        thread.stop = Stop::Signal(sig);
                        if !past_deadline {
                            resume_with_owed_signal(thread)?;
                            still.push(tid);
                        }
                    }
                    Ok(status @ Status::Event(_)) => {
                        // An event stop (a late interrupt, or a thread created, which stays
                        // stopped until adopted below): at the deadline that is the stop we want.
                        children.extend(clone_child(tid, status));
                        thread.stop = Stop::Event;
                        if !past_deadline {
                            resume_with_owed_signal(thread)?;
                            still.push(tid);
                        }
                    }
                    Err(Errno::EINTR) => still.push(tid),
                    Err(e) => return Err(failed!("waiting for thread {tid}: {e}")),
                }
            }
            running = still;
            if !running.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.threads.retain(|t| !gone.contains(&t.tid));
        self.adopt(children)
    }

    /// Resume every thread now; returns how long the process was stopped.
    pub fn resume(mut self) -> Duration {
        for thread in self.threads.drain(..) {
            release(self.pid, &thread);
        }
        self.since.elapsed()
    }
}

impl Drop for AllThreads {
    fn drop(&mut self) {
        for thread in self.threads.drain(..) {
            release(self.pid, &thread);
        }
    }
}

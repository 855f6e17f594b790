//! Bringing the target to a stop in which no thread uses the code being replaced or removed.
//!
//! Hot functions on busy threads are almost never idle everywhere at one instant, so retrying with
//! every thread resumed rarely succeeds. Instead: stop every thread; keep the threads found safe
//! stopped; let only the busy ones run until each has been caught outside the guarded code. A busy
//! thread whose stack unwinds (`.eh_frame` of every mapped object) gets an `int3` on the return
//! address of its outermost guarded frame and runs until it reaches it; any other busy thread runs
//! alone in short bursts and is stopped again. Because safe threads stay stopped, the set of safe threads only
//! grows. A busy thread may be waiting for one of the stopped threads, so every
//! [`ROUND`] everything is released briefly and the process starts over; after the timeout the
//! operation is refused, naming the thread and the function, with every thread resumed.

use std::time::{Duration, Instant};

use crate::error::{refused, Result};
use crate::maps;
use crate::memory::Memory;
use crate::ptrace::AllThreads;
use crate::safety::{self, Busy, Guarded};
use crate::unwind::Unwinder;

/// How long busy threads get to leave the guarded code before everyone is released and we start over.
const ROUND: Duration = Duration::from_millis(200);
/// Pause, with every thread running, between two rounds.
const BREATHER: Duration = Duration::from_millis(10);

/// What the caller of [`stop_when_safe`] gets: every thread stopped, none using guarded code.
pub struct SafeStop {
    pub threads: AllThreads,
    /// How many times the busy threads were let run before the process was safe.
    pub bursts: u32,
}

/// Stop every thread of `pid` such that no thread uses `guarded`, or refuse after `timeout`.
pub fn stop_when_safe(
    pid: i32,
    memory: &Memory,
    guarded: &[Guarded],
    timeout: Duration,
) -> Result<SafeStop> {
    let mut unwinder = Unwinder::new(pid);
    let started = Instant::now();
    let mut bursts = 0u32;
    loop {
        let round = Instant::now();
        let mut threads = AllThreads::stop(pid)?;
        loop {
            crate::interrupt::check(pid)?;
            threads.catch_new()?;
            let maps_now = maps::read(pid)?;
            let busy = safety::busy_threads(&threads, &maps_now, memory, guarded, &mut unwinder)?;
            let Some(first) = busy.first() else {
                return Ok(SafeStop { threads, bursts });
            };
            if started.elapsed() >= timeout {
                return Err(refused!(
                    "{} is in use by thread {}; gave up after {}s",
                    first.name,
                    first.tid,
                    timeout.as_secs_f64()
                ));
            }
            if round.elapsed() >= ROUND {
                break;
            }
            let (catchable, returns) = return_breakpoints(&busy, guarded, memory);
            if catchable.is_empty() {
                let tids: Vec<i32> = busy.iter().map(|b| b.tid).collect();
                threads.run_only(&tids, burst_length(bursts))?;
            } else {
                let deadline = (started + timeout).min(Instant::now() + ROUND);
                let breakpoints = Breakpoints::insert(memory, &returns)?;
                let ran = threads.run_to_breakpoints(&catchable, &returns, deadline);
                breakpoints.remove()?;
                ran?;
            }
            bursts += 1;
        }
        drop(threads);
        std::thread::sleep(BREATHER);
    }
}

/// The busy threads whose way out of the guarded code is known (a return address outside it that
/// can be read), and the distinct addresses.
fn return_breakpoints(busy: &[Busy], guarded: &[Guarded], memory: &Memory) -> (Vec<i32>, Vec<u64>) {
    let (mut tids, mut returns) = (Vec::new(), Vec::new());
    for b in busy {
        let Some(ra) = b.exit else {
            continue;
        };
        if safety::find(guarded, ra).is_none() && memory.read(ra, 1).is_ok() {
            tids.push(b.tid);
            if !returns.contains(&ra) {
                returns.push(ra);
            }
        }
    }
    (tids, returns)
}

/// `int3` written over the first byte of each address, with the original bytes kept to put back.
/// Dropping without [`Breakpoints::remove`] also puts them back, so no error path leaves one behind.
struct Breakpoints<'a> {
    memory: &'a Memory,
    saved: Vec<(u64, Vec<u8>)>,
}

impl<'a> Breakpoints<'a> {
    const INT3: u8 = 0xcc;

    fn insert(memory: &'a Memory, addresses: &[u64]) -> Result<Breakpoints<'a>> {
        let mut breakpoints = Breakpoints {
            memory,
            saved: Vec::new(),
        };
        for &address in addresses {
            let original = memory.read(address, 1)?;
            memory.write(address, &[Self::INT3])?;
            breakpoints.saved.push((address, original));
        }
        Ok(breakpoints)
    }

    fn remove(mut self) -> Result<()> {
        let mut result = Ok(());
        for (address, original) in std::mem::take(&mut self.saved) {
            if let Err(e) = self.memory.write(address, &original) {
                result = result.and(Err(e));
            }
        }
        result
    }
}

impl Drop for Breakpoints<'_> {
    fn drop(&mut self) {
        for (address, original) in &self.saved {
            let _ = self.memory.write(*address, original);
        }
    }
}

/// Burst lengths between 50 µs and about 1.6 ms that vary from one burst to the next, so that a
/// thread looping with a fixed period is not always stopped at the same point of its loop.
fn burst_length(burst: u32) -> Duration {
    let jitter = u64::from(burst.wrapping_mul(2_654_435_761) >> 27);
    Duration::from_micros(50 + jitter * 50)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_short_and_varied() {
        let lengths: Vec<Duration> = (0..32).map(burst_length).collect();
        assert!(lengths
            .iter()
            .all(|d| *d >= Duration::from_micros(50) && *d <= Duration::from_micros(1650)));
        let distinct: std::collections::HashSet<_> = lengths.iter().collect();
        assert!(distinct.len() > 8, "{lengths:?}");
    }
}

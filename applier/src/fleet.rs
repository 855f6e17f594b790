//! `ulp-apply --all BIN PATCH`: apply one patch to every process that has `BIN` mapped, one after
//! the other, and report each result and a summary.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use ulp_runtime::Patch;

use crate::apply::{apply, ApplyOptions, ApplyReport};
use crate::error::{failed, Error, Result};
use crate::maps;

/// The processes that have `bin` mapped: their `/proc/PID/exe` or any file mapping is `bin`
/// (compared by canonical path). Our own process is never one of them. In increasing pid order.
pub fn processes_with(bin: &Path) -> Result<Vec<i32>> {
    let want = std::fs::canonicalize(bin).map_err(|e| failed!("{}: {e}", bin.display()))?;
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map_err(|e| failed!("cannot list /proc: {e}"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && maps_object(pid, &want))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

fn maps_object(pid: i32, want: &Path) -> bool {
    let same = |path: &str| std::fs::canonicalize(path).is_ok_and(|p| p == want);
    if std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .is_some_and(|p| same(&p))
    {
        return true;
    }
    let Ok(mappings) = maps::read(pid) else {
        return false;
    };
    let mut seen: Vec<&str> = Vec::new();
    mappings
        .iter()
        .filter_map(|m| m.path.as_deref())
        .filter(|p| p.starts_with('/'))
        .any(|p| {
            if seen.contains(&p) {
                return false;
            }
            seen.push(p);
            same(p)
        })
}

/// How one process fared.
#[derive(Debug, Clone, Serialize)]
pub struct FleetEntry {
    pub pid: i32,
    /// `applied`, `refused` or `failed`.
    pub result: &'static str,
    pub error: Option<String>,
    pub report: Option<ApplyReport>,
}

/// Every process's result and the counts.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub object: PathBuf,
    pub results: Vec<FleetEntry>,
    pub applied: usize,
    pub refused: usize,
    pub failed: usize,
}

impl FleetReport {
    /// 0 all applied · 2 some refused, none failed · 1 some failed.
    pub fn exit_code(&self) -> i32 {
        if self.failed > 0 {
            1
        } else if self.refused > 0 {
            2
        } else {
            0
        }
    }

    /// The one `error:` line for a non-zero exit, if any.
    pub fn error(&self) -> Option<Error> {
        let total = self.results.len();
        match self.exit_code() {
            0 => None,
            2 => Some(Error::Refused(format!(
                "{} of {total} processes refused the patch",
                self.refused
            ))),
            _ => Some(Error::Failed(format!(
                "{} of {total} processes failed ({} refused)",
                self.failed, self.refused
            ))),
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} applied, {} refused, {} failed",
            self.applied, self.refused, self.failed
        )
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for e in &self.results {
            match (&e.report, &e.error) {
                (Some(r), _) => {
                    out += &format!(
                        "{}: applied as #{}; threads stopped for {} µs\n",
                        e.pid,
                        r.sequence,
                        r.stop_us.unwrap_or(0)
                    )
                }
                (None, error) => {
                    out += &format!(
                        "{}: {}: {}\n",
                        e.pid,
                        e.result,
                        error.as_deref().unwrap_or("")
                    )
                }
            }
        }
        out += &self.summary();
        out.push('\n');
        out
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "object": self.object,
            "results": self.results,
            "summary": {
                "applied": self.applied,
                "refused": self.refused,
                "failed": self.failed,
            },
        })
    }
}

/// Apply `patch` to every process that has `bin` mapped. No such process is an error.
pub fn apply_all(bin: &Path, patch: &Patch, options: &ApplyOptions) -> Result<FleetReport> {
    let pids = processes_with(bin)?;
    if pids.is_empty() {
        return Err(failed!("no process has {} mapped", bin.display()));
    }
    let mut report = FleetReport {
        object: std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf()),
        results: Vec::new(),
        applied: 0,
        refused: 0,
        failed: 0,
    };
    for pid in pids {
        crate::interrupt::check(pid)?;
        let entry = match apply(pid, patch, options) {
            Ok(r) => {
                report.applied += 1;
                FleetEntry {
                    pid,
                    result: "applied",
                    error: None,
                    report: Some(r),
                }
            }
            Err(e) => {
                let result = match e {
                    Error::Refused(_) => {
                        report.refused += 1;
                        "refused"
                    }
                    Error::Failed(_) => {
                        report.failed += 1;
                        "failed"
                    }
                };
                FleetEntry {
                    pid,
                    result,
                    error: Some(e.to_string()),
                    report: None,
                }
            }
        };
        report.results.push(entry);
    }
    Ok(report)
}

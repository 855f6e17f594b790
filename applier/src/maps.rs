//! `/proc/PID/maps`: the target's mappings, in address order.

use std::path::Path;

use crate::error::{failed, Result};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub execute: bool,
    /// `p` (private) rather than `s` (shared).
    pub private: bool,
    /// File offset of `start`.
    pub offset: u64,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`), `None` for anonymous memory.
    pub path: Option<String>,
}

impl Mapping {
    pub fn contains(&self, address: u64) -> bool {
        self.start <= address && address < self.end
    }

    /// Anonymous (no file, no pseudo-name).
    pub fn is_anonymous(&self) -> bool {
        self.path.is_none()
    }

    /// The permission string as the kernel prints it, e.g. `r-xp`.
    pub fn perms(&self) -> String {
        format!(
            "{}{}{}{}",
            if self.read { 'r' } else { '-' },
            if self.write { 'w' } else { '-' },
            if self.execute { 'x' } else { '-' },
            if self.private { 'p' } else { 's' }
        )
    }
}

/// Parse the maps of process `pid`. A missing process is an error naming it.
pub fn read(pid: i32) -> Result<Vec<Mapping>> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound || !Path::new(&format!("/proc/{pid}")).exists()
        {
            failed!("process {pid} does not exist")
        } else {
            failed!("cannot read {path}: {e}")
        }
    })?;
    text.lines()
        .map(|line| parse_line(line).ok_or_else(|| failed!("{path}: cannot parse line '{line}'")))
        .collect()
}

/// Parse one maps line: `start-end perms offset dev inode [path]`.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().map(str::trim_start).unwrap_or("");
    let (start, end) = range.split_once('-')?;
    if perms.len() < 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        execute: perms[2] == b'x',
        private: perms[3] == b'p',
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path: (!path.is_empty()).then(|| path.to_string()),
    })
}

/// The mapping containing `address`.
pub fn find(maps: &[Mapping], address: u64) -> Option<&Mapping> {
    maps.iter().find(|m| m.contains(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_anonymous_lines() {
        let m = parse_line(
            "55d0c0a00000-55d0c0a01000 r-xp 00001000 08:01 1234   /usr/bin/prog (deleted)",
        )
        .unwrap();
        assert_eq!(
            (m.start, m.end, m.offset, m.inode),
            (0x55d0c0a00000, 0x55d0c0a01000, 0x1000, 1234)
        );
        assert_eq!(m.perms(), "r-xp");
        assert_eq!(m.path.as_deref(), Some("/usr/bin/prog (deleted)"));
        let a = parse_line("7f0000000000-7f0000001000 r--p 00000000 00:00 0 ").unwrap();
        assert!(a.is_anonymous());
    }
}

//! Reading and writing the target's memory through `/proc/PID/mem`. Writes go through even to
//! read-only pages (the kernel breaks copy-on-write for us), which is how code is patched without
//! ever making a mapping writable and executable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use crate::error::{failed, Result};

/// An open `/proc/PID/mem`.
pub struct Memory {
    pid: i32,
    file: File,
}

impl Memory {
    pub fn open(pid: i32) -> Result<Memory> {
        let path = format!("/proc/{pid}/mem");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| failed!("cannot open {path}: {e}"))?;
        Ok(Memory { pid, file })
    }

    /// Exactly `len` bytes at `address`.
    pub fn read(&self, address: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, address).map_err(|e| {
            failed!(
                "cannot read {len} bytes at {address:#x} in process {}: {e}",
                self.pid
            )
        })?;
        Ok(buf)
    }

    /// A little-endian `u64` at `address`.
    pub fn read_u64(&self, address: u64) -> Result<u64> {
        let bytes = self.read(address, 8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    /// A NUL-terminated string at `address`, at most `max` bytes.
    pub fn read_c_string(&self, address: u64, max: usize) -> Result<String> {
        let mut out = Vec::new();
        let mut at = address;
        while out.len() < max {
            let mut chunk = [0u8; 64];
            let n = self.file.read_at(&mut chunk, at).map_err(|e| {
                failed!(
                    "cannot read a string at {at:#x} in process {}: {e}",
                    self.pid
                )
            })?;
            if n == 0 {
                break;
            }
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..n]);
            at += n as u64;
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Write all of `bytes` at `address`.
    pub fn write(&self, address: u64, bytes: &[u8]) -> Result<()> {
        self.file.write_all_at(bytes, address).map_err(|e| {
            failed!(
                "cannot write {} bytes at {address:#x} in process {}: {e}",
                bytes.len(),
                self.pid
            )
        })
    }
}

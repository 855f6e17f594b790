//! Shared test support: compile the small C target, run it under a guard that kills it, talk to it
//! line by line, and build patches by hand from its symbol table.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use object::{Object, ObjectSection, ObjectSymbol};
use ulp_runtime::hash::masked_hash;
use ulp_runtime::meta::{Binding, Meta, ReplacedFunction, TargetSymbol};
use ulp_runtime::patch::{Section, SectionKind, Symbol, SymbolKind};
use ulp_runtime::Patch;

/// Compile `answer.c` into `dir` with extra `flags`; the executable's path.
pub fn compile(dir: &Path, flags: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/answer.c");
    let out = dir.join("answer");
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

/// A running target, killed when dropped.
pub struct Target {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Target {
    pub fn start(exe: &Path, args: &[&str]) -> Target {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("target starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut target = Target {
            child,
            stdin,
            stdout,
        };
        // One round trip: the program is up and blocked in read().
        assert_eq!(target.ask("0"), "1");
        target
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send one line, read the answer line.
    pub fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    }

    /// Still running (not exited or killed).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Size and masked hash of function `name` in the executable file.
pub fn function_fingerprint(exe: &Path, name: &str) -> (u64, String) {
    let data = std::fs::read(exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} in the executable"));
    let section = file
        .section_by_index(symbol.section_index().unwrap())
        .unwrap();
    let start = (symbol.address() - section.address()) as usize;
    let bytes = &section.data().unwrap()[start..start + symbol.size() as usize];
    (symbol.size(), masked_hash(bytes, &[]))
}

/// A patch replacing global function `name` of `exe` with `code`.
pub fn replace_function(exe: &Path, name: &str, code: Vec<u8>) -> Patch {
    let (size, hash) = function_fingerprint(exe, name);
    let mut meta = Meta::new(format!("{name}-fix"));
    meta.id = format!(
        "{:016x}",
        code.iter()
            .fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64)
                .wrapping_mul(0x100000001b3))
            ^ size
    );
    meta.functions.push(ReplacedFunction {
        target: TargetSymbol {
            name: name.to_string(),
            binding: Binding::Global,
            file: None,
            position: 0,
        },
        original_size: size,
        original_hash: hash,
        masked: Vec::new(),
        replacement: format!("{name}.new"),
        reason: "test".into(),
    });
    let len = code.len() as u64;
    Patch {
        meta,
        sections: vec![Section::with_data(
            format!(".text.{name}"),
            SectionKind::Text,
            16,
            code,
        )],
        symbols: vec![Symbol {
            name: format!("{name}.new"),
            kind: SymbolKind::Function,
            section: 0,
            offset: 0,
            size: len,
        }],
        relocations: Vec::new(),
    }
}

/// `mov $value, %eax; ret`.
pub fn return_constant(value: u32) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&value.to_le_bytes());
    code.push(0xc3);
    code
}

/// Write `patch` as a `.ulp` file in `dir` (the writer fills in the id); the path and the id.
pub fn write_patch_file(dir: &Path, file: &str, patch: &mut Patch) -> (PathBuf, String) {
    let bytes = ulp_runtime::write_patch(patch).expect("patch serializes");
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    (path, patch.meta.id.clone())
}

/// Run one of the tools; (exit code, stdout, stderr).
pub fn run(tool: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tool).args(args).output().expect("tool runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `/proc/PID/maps` as text.
pub fn maps_text(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

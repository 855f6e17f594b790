//! Support for the end-to-end tests: find the workspace's tools, compile fixture programs, run them
//! as live targets that answer one line per query, and run `ulp-build`/`ulp-apply`/`ulp-info`.
//!
//! This crate knows nothing about how patching works; it only drives the CLI contract (DESIGN §5)
//! and real processes. Every process it starts is killed and reaped when its guard is dropped,
//! also when a test panics.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// How long a target may take to answer one query before the test fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one run of a tool (or of gcc) may take before it is killed and the test fails.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory of the crate `package` (a dependency of `ulp-tests` that is fetched for its
/// sources, never built), found with `cargo metadata`, which also downloads it when missing.
pub fn package_dir(package: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = run(Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(workspace_root().join("Cargo.toml")));
    out.expect_code(0, "cargo metadata");
    let meta: serde_json::Value = serde_json::from_str(&out.stdout).expect("cargo metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == package)
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("{package} in cargo metadata (a dependency of ulp-tests)"));
    Path::new(manifest)
        .parent()
        .unwrap_or_else(|| panic!("{package} directory"))
        .to_path_buf()
}

/// The `fixtures/` directory.
pub fn fixtures_dir() -> PathBuf {
    workspace_root().join("fixtures")
}

/// The original and the patched source of a fixture scenario: `fixtures/NAME/prog.c` and
/// `fixtures/NAME/new/prog.c`.
pub fn scenario(name: &str) -> (PathBuf, PathBuf) {
    let dir = fixtures_dir().join(name);
    let old = dir.join("prog.c");
    let new = dir.join("new").join("prog.c");
    assert!(old.is_file(), "missing fixture {}", old.display());
    assert!(new.is_file(), "missing fixture {}", new.display());
    (old, new)
}

/// A workspace binary (`ulp-build`, `ulp-apply`, `ulp-info`) from the same profile directory as the
/// running test executable (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
pub fn tool(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Compiler settings the target and its patch are built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flavor {
    /// The C compiler: `gcc` or `clang` (passed to `ulp-build --cc` when not `gcc`).
    pub cc: &'static str,
    /// Position-independent executable (`-fPIE -pie`) or not (`-fno-pie -no-pie`).
    pub pie: bool,
    /// Optimisation flag, e.g. `-O2`.
    pub opt: &'static str,
    /// Further code-generation flags, e.g. `-fcf-protection=full`.
    pub extra: &'static [&'static str],
}

impl Flavor {
    pub const PIE_O2: Flavor = Flavor::gcc(true, "-O2");
    pub const PIE_O0: Flavor = Flavor::gcc(true, "-O0");
    pub const PIE_OS: Flavor = Flavor::gcc(true, "-Os");
    pub const NO_PIE_O2: Flavor = Flavor::gcc(false, "-O2");
    pub const NO_PIE_O0: Flavor = Flavor::gcc(false, "-O0");
    /// Intel CET: every function that can be reached indirectly starts with `endbr64`.
    pub const PIE_O2_CET: Flavor = Flavor::PIE_O2.with_extra(&["-fcf-protection=full"]);

    /// A gcc flavor without extra flags.
    pub const fn gcc(pie: bool, opt: &'static str) -> Flavor {
        Flavor {
            cc: "gcc",
            pie,
            opt,
            extra: &[],
        }
    }

    /// The same flavor with clang as the compiler of the target and of the patch.
    pub const fn clang(self) -> Flavor {
        Flavor {
            cc: "clang",
            ..self
        }
    }

    /// The same flavor with `extra` as its further code-generation flags.
    pub const fn with_extra(self, extra: &'static [&'static str]) -> Flavor {
        Flavor { extra, ..self }
    }

    /// Code-generation flags: used for the target and passed to `ulp-build --cflags`.
    pub fn cflags(&self) -> Vec<String> {
        let pic = if self.pie { "-fPIE" } else { "-fno-pie" };
        let mut flags = vec![self.opt.to_string(), pic.to_string()];
        flags.extend(self.extra.iter().map(|f| f.to_string()));
        flags.push(format!("-I{}", fixtures_dir().join("common").display()));
        flags
    }

    /// Link-only flags for the target.
    pub fn ldflags(&self) -> Vec<String> {
        let pie = if self.pie { "-pie" } else { "-no-pie" };
        vec![pie.to_string(), "-pthread".to_string()]
    }

    /// `ulp-build` arguments that select this flavor's compiler (none for gcc, the default).
    pub fn build_args(&self) -> Vec<&'static str> {
        if self.cc == "gcc" {
            Vec::new()
        } else {
            vec!["--cc", self.cc]
        }
    }
}

/// Exit code, stdout and stderr of a finished tool run.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with the whole output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: expected exit code {code}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless stderr is exactly one line that starts with `error: ` (DESIGN §5).
    #[track_caller]
    pub fn expect_one_error_line(&self) -> &Self {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error: "),
            "expected exactly one `error: ` line on stderr, got:\n{}",
            self.stderr
        );
        self
    }
}

/// Runs a command to completion with a watchdog: a run longer than [`TOOL_TIMEOUT`] is killed and
/// fails the test.
pub fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_with_deadline(&mut child, TOOL_TIMEOUT)
        .unwrap_or_else(|| panic!("{what} did not finish within {TOOL_TIMEOUT:?}"));
    Output {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child`, killing it (and returning `None`) once `limit` has passed.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // A watchdog's poll interval, not a guess about the child's timing.
        thread::sleep(Duration::from_millis(5));
    }
}

/// Compiles `sources` into the executable `out` with gcc: `cflags`, `-g`, then `ldflags`.
/// Panics with gcc's output on failure.
pub fn compile<S: AsRef<OsStr>>(sources: &[S], out: &Path, cflags: &[String], ldflags: &[String]) {
    compile_with("gcc", sources, out, cflags, ldflags);
}

/// Like [`compile`], with the compiler `cc`.
pub fn compile_with<S: AsRef<OsStr>>(
    cc: &str,
    sources: &[S],
    out: &Path,
    cflags: &[String],
    ldflags: &[String],
) {
    let mut cmd = Command::new(cc);
    cmd.args(cflags)
        .arg("-g")
        .args(sources)
        .arg("-o")
        .arg(out)
        .args(ldflags);
    let result = run(&mut cmd);
    assert_eq!(
        result.code,
        Some(0),
        "{cc} failed: {cmd:?}\n{}",
        result.stderr
    );
}

/// Compiles a fixture source for `flavor` into `dir` and returns the executable's path.
pub fn compile_fixture(source: &Path, dir: &Path, flavor: Flavor) -> PathBuf {
    compile_fixture_sources(&[source], dir, flavor)
}

/// Compiles the fixture sources (one program) for `flavor` into `dir` and returns the
/// executable's path.
pub fn compile_fixture_sources(sources: &[&Path], dir: &Path, flavor: Flavor) -> PathBuf {
    let out = dir.join("target-program");
    compile_with(
        flavor.cc,
        sources,
        &out,
        &flavor.cflags(),
        &flavor.ldflags(),
    );
    out
}

/// The symbol names of an executable's `.symtab`, from `nm` (so a test can check that the code
/// it means to patch has the shape it expects, e.g. that a GCC clone exists).
pub fn symbol_names(exe: &Path) -> Vec<String> {
    let out = run(Command::new("nm").arg(exe));
    out.expect_code(0, "nm");
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

/// The disassembly of one function of an executable, from `objdump -d --disassemble=NAME`.
pub fn disassemble(exe: &Path, function: &str) -> String {
    let out = run(Command::new("objdump")
        .arg("-d")
        .arg(format!("--disassemble={function}"))
        .arg(exe));
    out.expect_code(0, "objdump");
    out.stdout
}

/// Runs `ulp-build OLD NEW -o OUT`, passing each of `cflags` as its own `--cflags=…`, then `extra`.
pub fn ulp_build(old: &Path, new: &Path, out: &Path, cflags: &[String], extra: &[&str]) -> Output {
    let mut cmd = Command::new(tool("ulp-build"));
    cmd.arg(old).arg(new).arg("-o").arg(out);
    for flag in cflags {
        cmd.arg(format!("--cflags={flag}"));
    }
    cmd.args(extra);
    run(&mut cmd)
}

/// Runs `ulp-apply -p PID ARGS…`.
pub fn ulp_apply<S: AsRef<OsStr>>(pid: u32, args: &[S]) -> Output {
    run(Command::new(tool("ulp-apply"))
        .arg("-p")
        .arg(pid.to_string())
        .args(args))
}

/// Runs `ulp-info ARGS…`.
pub fn ulp_info<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run(Command::new(tool("ulp-info")).args(args))
}

/// Applies `patch` to `pid` and panics with the tool's output unless it succeeded.
#[track_caller]
pub fn apply_ok(pid: u32, patch: &Path) {
    ulp_apply(
        pid,
        &[patch.as_os_str(), OsStr::new("--timeout"), OsStr::new("30")],
    )
    .expect_code(0, "ulp-apply");
}

/// Reverts the last applied patch of `pid` and panics with the tool's output unless it succeeded.
#[track_caller]
pub fn revert_ok(pid: u32) {
    ulp_apply(pid, &["--revert"]).expect_code(0, "ulp-apply --revert");
}

/// A running target program, driven one line at a time. Dropping it kills and reaps the process.
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Target {
    /// Starts `exe` with piped stdin and stdout; its stderr goes to the test's stderr.
    pub fn spawn(exe: &Path) -> Target {
        Target::spawn_with_args::<&OsStr>(exe, &[])
    }

    /// Like [`Target::spawn`], with command-line arguments.
    pub fn spawn_with_args<S: AsRef<OsStr>>(exe: &Path, args: &[S]) -> Target {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Target {
            child,
            stdin,
            lines,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `query` as one line and returns the one line the target answers. Fails the test if no
    /// answer arrives within [`ANSWER_TIMEOUT`] or the target has closed its output.
    #[track_caller]
    pub fn ask(&mut self, query: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{query}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot send {query:?} to the target: {e}"));
        match self.lines.recv_timeout(ANSWER_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("target did not answer {query:?} within {ANSWER_TIMEOUT:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "target closed its output instead of answering {query:?} (status {status:?})"
                )
            }
        }
    }

    /// Reads the next line the target prints on its own (for programs that print unasked).
    #[track_caller]
    pub fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(ANSWER_TIMEOUT)
            .unwrap_or_else(|e| panic!("no line from the target: {e}"))
    }

    /// True while the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panics unless the process is still running.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(status.is_none(), "target exited: {status:?}");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scenario prepared for a test: a temporary directory, the running target built from the
/// original source, and the patch built from the original and the patched source.
pub struct Session {
    pub dir: tempfile::TempDir,
    pub old: PathBuf,
    pub new: PathBuf,
    pub flavor: Flavor,
    /// The running executable.
    pub exe: PathBuf,
    pub patch: PathBuf,
    pub target: Target,
}

impl Session {
    /// Compiles the fixture `name` with `flavor`, starts it, and builds its patch (which must succeed).
    pub fn start(name: &str, flavor: Flavor) -> Session {
        let (old, new) = scenario(name);
        let dir = tempfile::Builder::new()
            .prefix(&format!("ulp-test-{name}-"))
            .tempdir()
            .expect("tempdir");
        let exe = compile_fixture(&old, dir.path(), flavor);
        let patch = dir.path().join(format!("{name}.ulp"));
        let mut extra = vec!["--name", name];
        extra.extend(flavor.build_args());
        ulp_build(&old, &new, &patch, &flavor.cflags(), &extra).expect_code(0, "ulp-build");
        assert!(
            patch.is_file(),
            "ulp-build exited 0 but wrote no {}",
            patch.display()
        );
        let target = Target::spawn(&exe);
        Session {
            dir,
            old,
            new,
            flavor,
            exe,
            patch,
            target,
        }
    }

    pub fn pid(&self) -> u32 {
        self.target.pid()
    }

    pub fn ask(&mut self, query: &str) -> String {
        self.target.ask(query)
    }

    /// Applies the session's patch; panics unless `ulp-apply` exits 0.
    #[track_caller]
    pub fn apply(&mut self) {
        apply_ok(self.pid(), &self.patch);
    }

    /// Reverts the last applied patch; panics unless `ulp-apply --revert` exits 0.
    #[track_caller]
    pub fn revert(&mut self) {
        revert_ok(self.pid());
    }
}

/// The full cycle every scenario must survive: the original answer, the patched answer after apply,
/// the original answer again after revert, with the target alive throughout.
#[track_caller]
pub fn check_apply_and_revert(name: &str, flavor: Flavor, query: &str, old: &str, new: &str) {
    let mut s = Session::start(name, flavor);
    assert_eq!(s.ask(query), old, "before the patch");
    s.apply();
    assert_eq!(s.ask(query), new, "after applying the patch");
    s.revert();
    assert_eq!(s.ask(query), old, "after reverting the patch");
    s.target.assert_alive();
}

/// A fixture with one query and the answers of its original and its patched version.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub fixture: &'static str,
    pub query: &'static str,
    pub old: &'static str,
    pub new: &'static str,
}

pub const GLOBAL_FN: Case = Case {
    fixture: "global_fn",
    query: "10",
    old: "14757",
    new: "3051755",
};
pub const STATIC_FN: Case = Case {
    fixture: "static_fn",
    query: "10",
    old: "3976595158",
    new: "1997504766",
};
pub const STRING_LITERAL: Case = Case {
    fixture: "string_literal",
    query: "Ann",
    old: "Hello, Ann!",
    new: "Good morning, Ann, from the patch!",
};
pub const NEW_HELPER: Case = Case {
    fixture: "new_helper",
    query: "10",
    old: "550",
    new: "505",
};
/// Like [`NEW_HELPER`], but `main` calls `price` directly (see `fixtures/caller_registers`).
pub const CALLER_REGISTERS: Case = Case {
    fixture: "caller_registers",
    query: "10",
    old: "550",
    new: "505",
};
pub const LIBC_CALLS: Case = Case {
    fixture: "libc_calls",
    query: "7",
    old: "report 14",
    new: "report 21 from the heap",
};
pub const THREADS: Case = Case {
    fixture: "threads",
    query: "results",
    old: "58357 58357 58357 58357",
    new: "731660 731660 731660 731660",
};
/// The first answer of a fresh process; later answers count up.
pub const STATIC_LOCAL: Case = Case {
    fixture: "static_local",
    query: "next",
    old: "ticket 1",
    new: "ticket 1 (patched)",
};

/// `price` calls a new static helper and a new global function.
pub const NEW_FUNCTIONS: Case = Case {
    fixture: "new_functions",
    query: "10",
    old: "550",
    new: "1688",
};
/// `cube` is called through a pointer stored in a global table before the patch.
pub const FN_POINTER: Case = Case {
    fixture: "fn_pointer",
    query: "cube 7",
    old: "cube 343",
    new: "cube 1343",
};
/// `walk` calls itself.
pub const RECURSION: Case = Case {
    fixture: "recursion",
    query: "20",
    old: "6737",
    new: "23282",
};
/// `calc` is a switch compiled to a jump table; case 2 changed (see also case 7 in the test).
pub const SWITCH_TABLE: Case = Case {
    fixture: "switch_table",
    query: "2 9",
    old: "72",
    new: "144",
};
/// At -O2 gcc emits `scale.constprop.0` and `norm.isra.0`; both bodies changed.
pub const GCC_CLONES: Case = Case {
    fixture: "gcc_clones",
    query: "10",
    old: "347",
    new: "278",
};
/// The first answer of a fresh process; the new variables count on in later answers.
pub const NEW_DATA: Case = Case {
    fixture: "new_data",
    query: "5",
    old: "score 10",
    new: "score 10 bonus 105 calls 1",
};
/// Patched code calls strlen and memcpy, which glibc resolves through IFUNCs.
pub const IFUNC_CALLS: Case = Case {
    fixture: "ifunc_calls",
    query: "kiwi",
    old: "4 letters",
    new: "4 letters in 'kiwi'",
};

/// Every fixture that answers queries.
pub const ALL_CASES: [Case; 14] = [
    GLOBAL_FN,
    STATIC_FN,
    STRING_LITERAL,
    NEW_HELPER,
    LIBC_CALLS,
    THREADS,
    STATIC_LOCAL,
    NEW_FUNCTIONS,
    FN_POINTER,
    RECURSION,
    SWITCH_TABLE,
    GCC_CLONES,
    NEW_DATA,
    IFUNC_CALLS,
];

impl Case {
    /// See [`check_apply_and_revert`].
    #[track_caller]
    pub fn check(&self, flavor: Flavor) {
        check_apply_and_revert(self.fixture, flavor, self.query, self.old, self.new);
    }
}

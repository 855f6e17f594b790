//! A real program no one here wrote (DESIGN §7): the Lua 5.4 interpreter from the `lua-src`
//! crate's sources, running `fixtures/lua/serve.lua`. The test patches `str_reverse` in Lua's
//! `lstrlib.c` (a static function reached only through the string library's function table) in
//! the running interpreter, and reverts it.

use std::path::{Path, PathBuf};
use std::thread;

use ulp_tests::{apply_ok, compile, fixtures_dir, package_dir, revert_ok, ulp_build, Target};

/// Lua's own compiler flags (its makefile, `linux` target), without `-g`.
const LUA_CFLAGS: [&str; 4] = ["-O2", "-Wall", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"];

/// The `lua-5.4.*` source directory of the `lua-src` package, found with `cargo metadata`.
fn lua_source_dir() -> PathBuf {
    let root = package_dir("lua-src");
    let root = root.as_path();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("read lua-src directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("lua-5.4"))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("no lua-5.4.* directory in {}", root.display()))
}

fn lua_cflags(src: &Path) -> Vec<String> {
    let mut flags: Vec<String> = LUA_CFLAGS.iter().map(|s| s.to_string()).collect();
    flags.push(format!("-I{}", src.display()));
    flags
}

/// Compiles Lua's library sources and `fixtures/lua/host.c` into `dir/lua-host`. Objects are
/// compiled on two threads (one per core of the smallest CI machine), then linked.
fn build_lua_host(src: &Path, dir: &Path) -> PathBuf {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("read Lua sources")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name != "lua.c" && name != "luac.c"
        })
        .collect();
    sources.sort();
    sources.push(fixtures_dir().join("lua").join("host.c"));

    let mut cflags = lua_cflags(src);
    cflags.push("-c".into());
    let objects: Vec<PathBuf> = sources
        .iter()
        .map(|s| dir.join(s.file_name().unwrap()).with_extension("o"))
        .collect();
    let jobs: Vec<(PathBuf, PathBuf)> = sources
        .iter()
        .cloned()
        .zip(objects.iter().cloned())
        .collect();
    let (left, right) = jobs.split_at(jobs.len() / 2);
    thread::scope(|scope| {
        for half in [left, right] {
            let cflags = &cflags;
            scope.spawn(move || {
                for (source, object) in half {
                    compile(&[source], object, cflags, &[]);
                }
            });
        }
    });
    let exe = dir.join("lua-host");
    compile(&objects, &exe, &[], &["-lm".into(), "-ldl".into()]);
    exe
}

#[test]
fn lua_string_reverse_is_patched_in_a_running_interpreter() {
    let src = lua_source_dir();
    let dir = tempfile::Builder::new()
        .prefix("ulp-test-lua-")
        .tempdir()
        .expect("tempdir");
    let exe = build_lua_host(&src, dir.path());

    // OLD is Lua's own lstrlib.c; NEW makes string.reverse also upper-case its result.
    let original = std::fs::read_to_string(src.join("lstrlib.c")).expect("read lstrlib.c");
    let line = "    p[i] = s[l - i - 1];";
    assert_eq!(
        original.matches(line).count(),
        1,
        "str_reverse's loop in lstrlib.c"
    );
    let patched = original.replace(line, "    p[i] = toupper(uchar(s[l - i - 1]));");
    for (sub, text) in [("old", &original), ("new", &patched)] {
        std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        std::fs::write(dir.path().join(sub).join("lstrlib.c"), text).expect("write lstrlib.c");
    }
    let patch = dir.path().join("lua-reverse.ulp");
    ulp_build(
        &dir.path().join("old/lstrlib.c"),
        &dir.path().join("new/lstrlib.c"),
        &patch,
        &lua_cflags(&src),
        &["--name", "lua-reverse"],
    )
    .expect_code(0, "ulp-build lstrlib.c");

    let script = fixtures_dir().join("lua").join("serve.lua");
    let mut lua = Target::spawn_with_args(&exe, &[script.as_os_str()]);
    assert_eq!(lua.ask("live patch"), "hctap evil LIVE PATCH");
    apply_ok(lua.pid(), &patch);
    assert_eq!(lua.ask("live patch"), "HCTAP EVIL LIVE PATCH");
    revert_ok(lua.pid());
    assert_eq!(lua.ask("live patch"), "hctap evil LIVE PATCH");
    lua.assert_alive();
}

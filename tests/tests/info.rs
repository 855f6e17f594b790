//! `ulp-info -p PID` lists what is applied, read back from the target itself.

use serde_json::Value;
use ulp_tests::{ulp_info, Flavor, Session};

/// The list of applied patches in `ulp-info -p PID --json` output: the top-level array, or the
/// first array-valued field of the top-level object (e.g. `"patches"`).
fn applied(pid: u32) -> Vec<Value> {
    let out = ulp_info(&["-p", &pid.to_string(), "--json"]);
    out.expect_code(0, "ulp-info -p PID --json");
    let json: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ulp-info printed invalid JSON ({e}):\n{}", out.stdout));
    match json {
        Value::Array(list) => list,
        Value::Object(map) => match map.get("patches") {
            Some(Value::Array(list)) => list.clone(),
            _ => map
                .values()
                .find_map(|v| v.as_array().cloned())
                .unwrap_or_else(|| {
                    panic!("no list of patches in ulp-info output:\n{}", out.stdout)
                }),
        },
        other => panic!("unexpected ulp-info output: {other}"),
    }
}

#[test]
fn applied_patch_is_listed_by_name_until_reverted() {
    let mut s = Session::start("global_fn", Flavor::PIE_O2);
    assert!(applied(s.pid()).is_empty(), "nothing applied yet");
    s.apply();
    let list = applied(s.pid());
    assert_eq!(list.len(), 1, "one patch applied: {list:?}");
    assert_eq!(list[0]["name"], "global_fn", "{list:?}");
    assert!(
        list[0]["id"].is_string() || list[0]["id"].is_number(),
        "{list:?}"
    );
    s.revert();
    assert!(applied(s.pid()).is_empty(), "nothing applied after revert");
    assert_eq!(s.ask("10"), "14757");
}

#[test]
fn patch_file_is_described_by_ulp_info() {
    let s = Session::start("static_fn", Flavor::PIE_O2);
    let out = ulp_info(&[s.patch.as_os_str(), "--json".as_ref()]);
    out.expect_code(0, "ulp-info PATCH --json");
    let json: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ulp-info printed invalid JSON ({e}):\n{}", out.stdout));
    assert!(
        out.stdout.contains("checksum"),
        "the replaced function is named in {json}"
    );
}

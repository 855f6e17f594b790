//! The fixtures themselves, without any patching: the original and the patched source, compiled
//! as ordinary programs, answer what the end-to-end tests expect of them. When an end-to-end test
//! fails, this tells whether the fixture or the patching is at fault.

use ulp_tests::{compile_fixture, scenario, Flavor, Target, ALL_CASES};

#[test]
fn original_and_patched_fixtures_answer_as_the_tests_expect() {
    for flavor in [Flavor::PIE_O2, Flavor::NO_PIE_O0] {
        for case in ALL_CASES {
            let (old, new) = scenario(case.fixture);
            for (source, expected) in [(old, case.old), (new, case.new)] {
                let dir = tempfile::tempdir().expect("tempdir");
                let exe = compile_fixture(&source, dir.path(), flavor);
                let mut target = Target::spawn(&exe);
                assert_eq!(
                    target.ask(case.query),
                    expected,
                    "{} compiled with {flavor:?}",
                    source.display()
                );
            }
        }
    }
}

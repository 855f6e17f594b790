//! Four threads call the patched function continuously while it is patched and reverted. The
//! fixture answers with a result of each thread computed after the query arrived (see
//! fixtures/threads/prog.c), so every thread must show the new code after apply and the old after
//! revert.

use ulp_tests::{Flavor, Session, THREADS};

const OLD: &str = THREADS.old;
const NEW: &str = THREADS.new;

fn four_busy_threads_switch_to_new_code(flavor: Flavor) {
    let mut s = Session::start("threads", flavor);
    assert_eq!(s.ask("results"), OLD, "before the patch");
    s.apply();
    assert_eq!(s.ask("results"), NEW, "after applying the patch");
    s.revert();
    assert_eq!(s.ask("results"), OLD, "after reverting the patch");
    s.apply();
    assert_eq!(s.ask("results"), NEW, "after applying the patch again");
    s.revert();
    assert_eq!(s.ask("results"), OLD, "after reverting again");
    s.target.assert_alive();
}

#[test]
fn four_busy_threads_switch_to_new_code_and_back() {
    four_busy_threads_switch_to_new_code(Flavor::PIE_O2);
}

#[test]
fn four_busy_threads_switch_to_new_code_at_o0_non_pie() {
    four_busy_threads_switch_to_new_code(Flavor::NO_PIE_O0);
}

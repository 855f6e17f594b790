//! `ulp-apply -p PID PATCH.ulp [--timeout SECS] [--dry-run] [--json]` · `ulp-apply -p PID --revert [ID]`

fn main() {
    std::process::exit(ulp_apply::cli::main_apply());
}

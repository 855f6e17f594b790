//! `ulp-apply -p PID PATCH.ulp [--replace] [--timeout SECS] [--dry-run] [--json]` ·
//! `ulp-apply -p PID --revert [ID]` · `ulp-apply --all BIN PATCH.ulp [--json]`

fn main() {
    std::process::exit(ulp_apply::cli::main_apply());
}

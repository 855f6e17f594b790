//! `ulp-info PATCH.ulp [--json]` · `ulp-info -p PID [--json]`

fn main() {
    std::process::exit(ulp_apply::cli::main_info());
}

//! The `ulp-build` command; everything lives in the `ulp_build` library.

fn main() {
    std::process::exit(ulp_build::cli::main());
}

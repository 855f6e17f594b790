//! Writes the man pages and shell completions of `ulp-apply` and `ulp-info` into the directory given
//! as the only argument, generated from the same clap definitions the tools parse with (`make man`).

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "man".into()));
    std::fs::create_dir_all(&dir)?;
    for (name, mut command) in [
        ("ulp-apply", ulp_apply::cli::ApplyArgs::command()),
        ("ulp-info", ulp_apply::cli::InfoArgs::command()),
    ] {
        let page = dir.join(format!("{name}.1"));
        clap_mangen::Man::new(command.clone()).render(&mut std::fs::File::create(page)?)?;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            clap_complete::generate_to(shell, &mut command, name, &dir)?;
        }
    }
    Ok(())
}

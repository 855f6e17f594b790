//! Writes `ulp-build`'s man page and shell completions into the directory given as the only
//! argument, generated from the same clap definition the tool parses with (`make man`).

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "man".into()));
    std::fs::create_dir_all(&dir)?;
    let mut command = ulp_build::cli::Args::command();
    clap_mangen::Man::new(command.clone())
        .render(&mut std::fs::File::create(dir.join("ulp-build.1"))?)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut command, "ulp-build", &dir)?;
    }
    Ok(())
}

//! Writes the files generated from the clap definitions: the man page
//! (man/fi-backup.8) and the bash, zsh and fish completions (completions/).
//! scripts/gen-files runs this; tests/generated.rs fails when a committed
//! file is stale and never writes one.

use clap_complete::Shell;
use std::path::PathBuf;

/// Every generated file: its path in the repository and its contents.
pub fn files() -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut man = Vec::new();
    clap_mangen::Man::new(fi_backup::cmd::cli::command())
        .section("8")
        .render(&mut man)
        .expect("rendering the man page");
    let mut out = vec![(root.join("man/fi-backup.8"), man)];
    for (shell, name) in [
        (Shell::Bash, "fi-backup.bash"),
        (Shell::Zsh, "_fi-backup"),
        (Shell::Fish, "fi-backup.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(
            shell,
            &mut fi_backup::cmd::cli::command(),
            "fi-backup",
            &mut buf,
        );
        if shell == Shell::Bash {
            // clap_complete 4.6 spells the state of a subcommand of a
            // hyphenated binary two ways (`fi__backup__subcmd__prune` in the
            // loop, `fi__subcmd__backup__subcmd__prune` in the arms), so no
            // subcommand option ever completes (clap-rs/clap#6421, open).
            // The arms are spelled as the loop spells them; the test
            // completes a subcommand's option to show it.
            buf = String::from_utf8(buf)
                .expect("the bash script is text")
                .replace("fi__subcmd__backup", "fi__backup")
                .into_bytes();
        }
        out.push((root.join("completions").join(name), buf));
    }
    out
}

#[allow(dead_code)]
fn main() {
    for (path, text) in files() {
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("wrote {}", path.display());
    }
}

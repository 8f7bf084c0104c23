//! The man page and the shell completions are generated from the clap
//! definitions (examples/gen_files.rs); this test fails when a committed
//! one no longer matches them. Regenerate with scripts/gen-files; the test
//! itself never writes them.

#[path = "../examples/gen_files.rs"]
mod gen_files;

#[test]
fn committed_man_page_and_completions_are_current() {
    let files = gen_files::files();
    assert_eq!(files.len(), 4, "the man page and three completions");
    let stale: Vec<String> = files
        .iter()
        .filter(|(path, fresh)| std::fs::read(path).ok().as_ref() != Some(fresh))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        stale.is_empty(),
        "stale or missing: {}; run scripts/gen-files and commit the result",
        stale.join(", ")
    );
}

fn shell(program: &str, script: &str) -> String {
    let out = std::process::Command::new(program)
        .args(["-c", script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is missing ({e}): run scripts/stack, which installs it")
        });
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// bash and fish complete from the committed scripts as their users would
/// get it (an abbreviated long option, a subcommand, a subcommand's
/// option); zsh's script is checked for syntax only (zsh completes only in
/// an interactive line editor).
#[test]
fn completions_complete() {
    let bash = |words: &str| {
        shell(
            "bash",
            &format!(
                "source completions/fi-backup.bash; COMP_WORDS=({words}); \
                 COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 _fi__backup fi-backup \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\""
            ),
        )
    };
    let lines = |s: String| s.lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        lines(bash("fi-backup --back")),
        ["--backup-dir", "--backup_dir"]
    );
    assert_eq!(lines(bash("fi-backup pr")), ["prune"]);
    assert!(lines(bash("fi-backup prune --keep-l")).contains(&"--keep-last".to_string()));
    let fish = shell(
        "fish",
        "source completions/fi-backup.fish; complete -C 'fi-backup --metr'; complete -C 'fi-backup verify --js'",
    );
    let first_words: Vec<&str> = fish
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(first_words, ["--metrics", "--json"]);
    shell("zsh", "zsh -n completions/_fi-backup");
}

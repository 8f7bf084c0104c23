//! Writes man/fi-backup.8 from the clap definitions (scripts/gen-man runs
//! this; tests/man_page.rs fails when the committed page is stale).

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/fi-backup.8");
    let mut buf = Vec::new();
    clap_mangen::Man::new(fi_backup::cli::command())
        .section("8")
        .render(&mut buf)
        .expect("rendering the man page");
    std::fs::write(&path, buf).expect("writing man/fi-backup.8");
    println!("wrote {}", path.display());
}

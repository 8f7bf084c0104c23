//! man/fi-backup.8 is generated from the clap definitions; this test fails
//! when the committed page no longer matches them. Regenerate with
//! scripts/gen-man (examples/gen_man.rs); the test itself never writes it.

use std::path::Path;

fn render() -> Vec<u8> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(fi_backup::cli::command())
        .section("8")
        .render(&mut buf)
        .expect("rendering the man page");
    buf
}

#[test]
fn committed_man_page_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/fi-backup.8");
    let fresh = render();
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "man/fi-backup.8 is stale: run scripts/gen-man and commit the result"
    );
}

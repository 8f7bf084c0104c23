//! libvirtd killed mid-consolidation and started again. In a test binary of
//! its own: cargo runs test binaries one at a time, so no other scenario
//! loses its daemon.

mod common;

use common::*;

/// libvirtd is killed while a block job runs, then started again: the run
/// fails cleanly; QEMU kept running; the next run reconciles from the
/// journal and consolidates; no data is lost.
#[test]
fn libvirtd_restart_mid_consolidation() {
    let mut s = Scenario::new("libvirtd");
    let dom = s.start("vm", "img", &[DiskSpec::qcow2("d.qcow2", "vda")]);
    let img = s.root.join("img");
    s.fi_ok(&[&dom]);
    write_delta_16(&dom, 0xb0);
    let child = s.spawn(&["-c", "--commit-all", "--bandwidth", "2", &dom]);
    wait_for_block_job(&dom, "vda");
    ok("pkill", &["-x", "libvirtd"]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    wait_until("libvirtd exits", 30, || {
        !cmd("pgrep", &["-x", "libvirtd"]).status.success()
    });
    start_libvirtd();
    assert_eq!(virsh(&["domstate", &dom]).trim(), "running");
    s.fi_ok(&["-c", "--commit-all", &dom]);
    assert_eq!(names_in(&img), ["d.qcow2"]);
    assert_guest(&dom, 0, &delta_16(0xb0));
    fault_row(
        "libvirtd killed mid-blockcommit (--commit-all), restarted",
        "run fails; QEMU runs on; next run reconciles (journal) and consolidates",
        "16 patterns read from the live disk",
    );
}

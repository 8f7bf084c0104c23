//! fi-backup: online forward-incremental backups of libvirt/KVM domains.
//!
//! The tree shows the pipelines (NUTSNBOLTS.md maps every module):
//! - `host`: what the machine tells us: libvirt, domain XML, backing chains,
//!   qemu-img, the other domains' files, and `facts`, which gathers them for
//!   the planners; `host::ffi` holds every call beyond std.
//! - `backup`: `plan` (pure: facts -> steps), `exec` (runs them), `copy`.
//! - `merge`: consolidation (pure plan, live and offline executors) and its
//!   journal.
//! - `state`: fi-backup's own state on the host: the overlay ledger, the
//!   snapshot intent, the locks.
//! - `store`: the backup directory: records, names, files, retention and
//!   prune.
//! - `cmd`: the command line and the commands: the sweep (backup and
//!   consolidation runs), list, restore, verify; logging and signals.
//!
//! Paths in the code name the folders (`crate::backup::plan`,
//! `crate::store::record`, ...); there are no aliases at the crate's root.
//! `unsafe` is denied everywhere but in `host::ffi`.

#![deny(unsafe_code)]

/// What the machine tells us, and the calls that ask it.
pub mod host {
    pub mod access;
    pub mod chain;
    pub mod domain;
    pub mod domxml;
    pub mod facts;
    #[allow(unsafe_code)]
    pub mod ffi;
    pub mod libvirt;
    pub mod process;
    pub mod qcow2;
    pub mod qemu_img;
    pub mod siblings;
}

/// A backup: the pure plan, its executor, the copier.
pub mod backup {
    pub mod copy;
    pub mod exec;
    pub mod plan;
}

/// Consolidation and its journal.
pub mod merge {
    pub mod consolidate;
    pub mod journal;
}

/// fi-backup's own state on the host.
pub mod state {
    pub mod adopt;
    pub mod intent;
    pub mod ledger;
    pub mod lock;
}

/// The backup directory.
pub mod store {
    pub mod fsutil;
    pub mod naming;
    pub mod prune;
    pub mod record;
    pub mod retention;
    pub mod tree;
}

/// Replication of the backup directory to another disk or an rclone remote.
pub mod sync {
    pub mod far;
    pub mod lock;
    pub mod plan;
    pub mod read;
}

/// The command line and the commands.
pub mod cmd {
    pub mod adopt;
    pub mod cli;
    pub mod config;
    pub mod list;
    pub mod logging;
    pub mod mount;
    pub mod prune;
    pub mod restore;
    pub mod settle;
    pub mod signals;
    pub mod sweep;
    pub mod sync;
    pub mod verify;
}

pub mod error;
pub mod fault;
pub mod pool;
pub mod progress;
pub mod report;
pub mod steps;
pub mod units;

#[cfg(test)]
mod testutil;

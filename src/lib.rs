//! fi-backup: online forward-incremental backups of libvirt/KVM domains.
//!
//! Data flows facts -> plan -> execution: `libvirt`, `domain` and `chain`
//! gather facts; `plan` turns them into steps; `exec` runs the steps with
//! `copy`, `fsutil` and `qemu_img`. `sweep` drives a run over many domains.
//! NUTSNBOLTS.md maps the modules in more words.
//!
//! `unsafe` is denied everywhere but in `ffi`, which wraps every foreign
//! call behind safe functions.

#![deny(unsafe_code)]

pub use ffi::libvirt as blockjob;
pub mod chain;
pub mod cli;
pub mod config;
pub mod consolidate;
pub mod copy;
pub mod domain;
pub mod error;
pub mod exec;
pub mod facts;
pub mod fault;
#[allow(unsafe_code)]
pub mod ffi;
pub mod fsutil;
pub mod intent;
pub mod journal;
pub mod ledger;
pub mod libvirt;
pub mod list;
pub mod lock;
pub mod logging;
pub mod naming;
pub mod plan;
pub mod prune;
pub mod qemu_img;
pub mod record;
pub mod restore;
pub mod retention;
pub mod siblings;
pub mod signals;
pub mod sweep;
pub mod units;
pub mod verify;

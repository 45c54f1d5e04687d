//! Durable experiment state for abgate: experiments, decisions, split history and analyses in SQLite (WAL).
//!
//! The experiment controller records every decision together with the state it leads to
//! in one transaction, *before* the decision takes effect, and marks it applied once the
//! route table has been swapped. After `kill -9` or a power loss at any moment, a restart
//! finds every experiment in the state and split it had ([`Store::experiments`]) and the
//! decisions that were recorded but possibly not applied ([`Store::unapplied`]), which it
//! applies again; applying sets weights, so doing it twice is harmless. Revisions
//! ([`Store::record_decision`]'s `expected_revision`) make sure that no decision is
//! recorded twice.
//!
//! Documents (an experiment's spec and state, observations, analyses) are stored as opaque
//! JSON so that this crate does not depend on the experiment crate's types;
//! [`StoredExperiment::spec_as`] and [`StoredExperiment::state_as`] read them back typed.
//!
//! A state file is checked before anything reads it ([`Store::open`]): one cut short,
//! overwritten, or whose write-ahead log is damaged past its torn tail is refused with
//! [`StateError::Corrupt`], one that is not abgate's with [`StateError::Foreign`], rather
//! than opened as an empty or older state. [`Store::checkpoint`] folds the log into the
//! main file, and [`backup`] copies a live database with SQLite's online backup API.
//!
//! The store is meant for the controller, a few calls per interval: one connection behind
//! a mutex, and one fsync per write. It is never on the request path.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backup;
mod error;
mod file;
mod integrity;
mod schema;
mod store;
mod wal;

pub use backup::{backup, BackupSummary};
pub use error::StateError;
pub use store::{DecisionRow, SplitChange, Store, StoredExperiment};

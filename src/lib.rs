//! strata: a daemonless manager of layered filesystem snapshots.
//!
//! The library holds everything: [`store`] is the snapshot API (no terminal
//! code), [`cmd`] the commands, [`printer`] the output. The `strata` binary
//! only parses, dispatches and reports errors.

pub mod argv;
pub mod cmd;
pub mod config;
pub mod heap;
pub mod oci;
pub mod printer;
pub mod reference;
pub mod store;

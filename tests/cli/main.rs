//! strata's CLI integration tests: each test is a shell session on its own store,
//! reading and writing files through real mounts.

#[macro_use]
mod support;

mod commands;
mod concurrency;
mod conformance;
mod crash;
mod errors;
mod json;
mod keys;
mod layers;
mod maintenance;
mod mount_engine;
mod references;
mod registry;
mod resources;
mod terminal;

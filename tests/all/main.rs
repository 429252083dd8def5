//! Integration tests: the real `tabula` binary, real components built from `examples/` and
//! `tests/guests/`, real HTTP over loopback, real Redis. One test binary, many modules, to
//! keep links few.

mod canary;
mod check;
mod cluster_layout;
mod dashboard;
mod deploy;
mod docs;
mod filesystem;
mod fleet;
mod harness;
mod hostile;
mod hostile_compile;
mod hostile_deploys;
mod hostile_guests;
mod hostile_listeners;
mod hostile_sessions;
mod in_process;
mod kv_apps;
mod kv_conformance;
mod manifests;
mod operations;
mod polyglot;
mod processes;
mod redis_server;
mod serving;
mod sessions;
mod shared_artifacts;
mod variables;

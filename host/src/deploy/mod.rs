//! Deploying components to running hosts: versions in the store, one switch for the fleet.
//!
//! - `registry`: components by digest, versions, each app's active pointer, the replicas'
//!   heartbeats, all in the shared store.
//! - `replica`: each serving process follows the registry and swaps its route table.
//! - `cache`: compiled components on local disk, so restarts do not recompile.
//! - `rollout`: one version made active on every replica, reported as it goes.
//! - `traffic`: each app's last minute of requests, carried in the heartbeats.
//! - [`admin`]: the admin API that uploads, deploys, rolls back and removes, and its
//!   dashboard (`/ui`).
//! - [`client`]: the CLI's side of the admin API.

pub mod admin;
pub(crate) mod cache;
pub mod client;
pub(crate) mod registry;
pub(crate) mod replica;
mod rollout;
pub(crate) mod traffic;

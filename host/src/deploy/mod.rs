//! Deploying components to running hosts: versions in the store, one switch for the fleet.
//!
//! - `registry`: components by digest, versions, each app's active pointer, the replicas'
//!   heartbeats, all in the shared store.
//! - `replica`: each serving process follows the registry and swaps its route table.
//! - `cache`: compiled components on local disk, so restarts do not recompile.
//! - [`artifacts`]: compiled components shared through the store, signed with a key only
//!   replicas hold, so a replica that joins does not recompile.
//! - `rollout`: one version made active on every replica, reported as it goes, at once or
//!   through a canary that gets a growing share of the requests.
//! - `canary`: the judge that advances, promotes or rolls back canaries by their figures.
//! - `traffic`: each app's last minute of requests, carried in the heartbeats.
//! - [`admin`]: the admin API that uploads, deploys, rolls back and removes, and its
//!   dashboard (`/ui`).
//! - [`client`]: the CLI's side of the admin API.
//! - [`check`]: `tabula check`, which deploys a probe to see whether a fleet keeps nothing
//!   between requests.

pub mod admin;
pub mod artifacts;
pub(crate) mod cache;
mod canary;
pub mod check;
pub mod client;
pub(crate) mod registry;
pub(crate) mod replica;
mod rollout;
pub(crate) mod traffic;

pub use registry::CanaryPlan;

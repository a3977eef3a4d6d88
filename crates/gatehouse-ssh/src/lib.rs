//! The SSH side of gatehouse: a russh server with a fixed modern algorithm set, our own accept
//! loop with pre-auth limits, public-key authentication against the directory, `direct-tcpip`
//! forwarding decided by `gatehouse-policy`, refusal of everything else, and the audit log.
//!
//! This crate never decides policy itself: it asks the directory who a key belongs to and the
//! inventory whether a (principal, target, port) is allowed, and acts on the answer.

#![forbid(unsafe_code)]

mod admission;
mod algorithms;
pub mod audit;
mod budget;
mod conn;
pub mod control;
mod handler;
mod health;
pub mod hostkey;
pub mod issuer;
pub mod liveness;
mod local;
pub mod proxy;
pub mod push;
mod refusals;
mod revoke;
mod server;
mod shared;
mod socket;
mod sources;
mod telemetry;
mod tunnel;

pub use algorithms::{russh_config, SERVER_ID};
pub use server::{serve, Listener};
pub use shared::Bastion;

//! The pure parts of the gatehouse benchmark: statistics over samples, `/proc` accounting of
//! a bastion's CPU time and memory, the targets, and the report (Markdown and JSON).
//!
//! The binary (`src/main.rs`) builds the namespaces, runs OpenSSH sshd and gatehouse side by
//! side and feeds the numbers in here. Nothing in this library starts a process or opens a
//! socket, so it is unit-tested without root.

#![forbid(unsafe_code)]

pub mod procfs;
pub mod report;
pub mod stats;

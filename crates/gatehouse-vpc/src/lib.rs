//! gatehouse-vpc: provision the VPC around a gatehouse bastion without a state file.
//!
//! Pipeline: [`spec`] (parse + validate, no I/O beyond reading the file) -> [`aws::observe`]
//! (what AWS reports for the stack tag, as plain [`model::Observed`] data) -> [`plan`] (pure
//! diff, unit-tested without AWS) -> [`aws::execute`] (one SDK call per step).
//!
//! Invariant: nothing outside resources tagged `gatehouse:stack = <name>` is ever changed; the
//! only untagged things touched are the default security group of a VPC the stack owns (tagged,
//! then emptied of rules) and nothing else.
#![forbid(unsafe_code)]

pub mod aws;
pub mod deploy;
pub mod digest;
pub mod existing;
pub mod model;
pub mod names;
pub mod output;
pub mod plan;
pub mod policy;
pub mod spec;
pub mod userdata;

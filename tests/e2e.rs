//! End-to-end tests: the real `gatehouse` binary, the real OpenSSH client and sshd, a real
//! Jupyter Server, all inside network namespaces created (and torn down) by each test.
//! They need root (namespaces). Run them with `tests/run`, which installs what they need.

mod aws; // gatehouse with AWS as the source of truth, against moto
mod bastion;
mod harness;
mod openssh_baseline; // the harness itself, with OpenSSH sshd as the bastion

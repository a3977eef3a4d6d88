//! End-to-end tests: the real `gatehouse` binary, the real OpenSSH client and sshd, a real
//! Jupyter Server, all inside network namespaces created (and torn down) by each test.
//! They need root (namespaces). Run them with `tests/run`, which installs what they need.
//!
//! - `bastion`: jumps, ProxyJump, Jupyter through -L, scp, bytes, refusals, pre-auth limits,
//!   idle timeout, reload and revocation, drain on SIGTERM, host key, check, hosts, demo
//! - `hardening`: verdicts (ssh-audit, systemd-analyze), a flood from one source, penalties,
//!   limits, a black-holed target, PROXY protocol, metrics, socket activation, kill -9
//! - `lifecycle`: connections ending at every phase (handshake cuts, failed and successful
//!   logins, channel opens, dials, shutdown), straight and behind PROXY: no panic, charges
//!   exactly as documented, every pre-auth slot released
//! - `journey`: gatehouse-vpc and gatehouse together under moto with IAM enforced: apply, the
//!   bastion on its user data's config with exactly the role's actions, ssh -J and Jupyter,
//!   revocation by an IAM change event, destroy
//! - `brownfield_journey`: the same in a VPC another tool made: the stack placed into the
//!   team's network reaches the team's own host (single bastion, then replicas behind the
//!   balancer), every Describe answer about that network unchanged after apply and destroy;
//!   the brownfield deployer's walk (the greenfield policy less the VPC-building actions)
//! - `scaleout`: three replicas behind HAProxy in `mode tcp` with PROXY v2 and health checks
//!   (the stand-in for AWS's NLB): one host key, the real client address, no penalties from
//!   probes, no failed login after a kill -9 is noticed, a rolling replacement that drops no
//!   login and drains an open tunnel
//! - `siege`: 200 hostile sources (slowloris, flood, behind PROXY) at the defaults: 99% of
//!   logins get in, the flood's log and audit stay bounded, every refusal is counted
//! - `certificates`: `[[trusted_user_ca]]` certificates made by `ssh-keygen -s`: one jumps,
//!   each bad one (other CA, unmapped principal, no port forwarding, source address,
//!   force-command, unknown critical option, too long, expired, not yet valid) is refused with
//!   its reason; a certificate's session ends at its expiry, a static user's open tunnel at
//!   `expires`, and a key whose `expiry-time` passed is refused
//! - `openssh_baseline`: the harness itself, with OpenSSH sshd as the bastion
//! - `sso`: `gatehouse login` against moto: a proof of an AWS identity (an SSO-style session's
//!   signed `sts:GetCallerIdentity`, bound to the bastion and a key) replayed to STS names that
//!   session; the certificate it gets works with stock `ssh -J`, `-W` and a Jupyter tunnel;
//!   bad proofs, unmapped callers and bad certificates are refused with their reason; two
//!   replicas behind HAProxy accept a certificate either issued
//! - `package`: the Debian package (cargo-deb) unpacked into a temporary root: files, control
//!   fields, conffile, maintainer scripts that start nothing, the binary and its config, the
//!   units through `systemd-analyze verify --root`

mod aws; // gatehouse with AWS as the source of truth, against moto
mod bastion;
mod brownfield_journey; // the journey inside an existing VPC: its network left exactly as it was
mod certificates; // trusted user CAs, and access that ends by itself (expires, expiry-time)
mod hardening;
mod harness;
mod instance_connect; // the last hop: the login key pushed to the host with EC2 Instance Connect
mod journey; // gatehouse-vpc and the daemon together, under enforced IAM: apply to destroy
mod lifecycle; // connections ending at every phase: panics, penalty charges, pre-auth slots
mod openssh_baseline;
mod package; // the Debian package, unpacked and checked: binary, config, units
mod scaleout; // replicas behind HAProxy (the NLB stand-in): kill -9, rolling replacement
mod siege; // 200 hostile sources at the defaults: slowloris, flood, PROXY; logins still get in
mod sso; // gatehouse login: proof, certificate, refusals, two replicas (moto, HAProxy)

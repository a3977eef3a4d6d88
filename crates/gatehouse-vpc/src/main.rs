//! `gatehouse-vpc`: provision the VPC around a gatehouse bastion.
//!
//! `plan [--json]`, `apply`, `destroy`, `output` — each reads the spec (`--spec`, default
//! `config/vpc.toml`) and validates it completely before any AWS call.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_vpc::aws::{self, execute::Waits, Clients};
use gatehouse_vpc::model::Step;
use gatehouse_vpc::{deploy, output, plan, spec};

/// Exit status for a bad spec (EX_DATAERR-like `EX_USAGE`, as the daemon uses for bad config).
const EXIT_BAD_SPEC: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse-vpc",
    version,
    about = "Provision the VPC around a gatehouse bastion"
)]
struct Cli {
    /// The VPC spec (TOML).
    #[arg(long, global = true, default_value = "config/vpc.toml")]
    spec: PathBuf,
    /// Send every AWS call to this endpoint (e.g. moto at http://127.0.0.1:5000).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// How long to wait for AWS to settle (instances, NAT gateways, IAM), e.g. "15m".
    #[arg(long, global = true, default_value = "15m", value_parser = humantime::parse_duration)]
    wait_timeout: std::time::Duration,
    /// How often to look while waiting, e.g. "5s".
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    poll_interval: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what apply would change (+ create, ~ change, - delete).
    Plan {
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make AWS match the spec (idempotent).
    Apply,
    /// Delete every resource tagged with the stack, in dependency order (nothing else). The
    /// audit log group stays, with its lines: the audit trail outlives the stack.
    Destroy {
        /// Delete the stack's audit log group too, and every audit line in it.
        #[arg(long)]
        delete_audit_log: bool,
    },
    /// Print the bastion's address and a ready ~/.ssh/config block.
    Output {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// The IAM user name you log in with (default: $USER).
        #[arg(long, env = "USER", default_value = "YOUR_IAM_USER")]
        user: String,
    },
    /// Print the IAM policy that plan, apply, output and destroy need for this stack (for the
    /// identity that deploys it), and nothing more. Makes no AWS call.
    Policy {
        /// Print the policy document and the action table as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        // Colors only on a terminal (a CI log would keep the escape codes).
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_VPC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let env_region = std::env::var("AWS_REGION")
        .ok()
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty());
    // plan and apply store the binary by its digest; destroy and output never need it.
    let binary = match cli.command {
        Command::Plan { .. } | Command::Apply => spec::ReadBinary::Yes,
        Command::Destroy { .. } | Command::Output { .. } | Command::Policy { .. } => {
            spec::ReadBinary::No
        }
    };

    let spec = match spec::load(&cli.spec, env_region.as_deref(), binary) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_SPEC);
        }
    };
    for warning in &spec.warnings {
        eprintln!("warning: {warning}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, spec, env_region)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse-vpc policy`: the deployer's policy, and which command needs which action.
fn print_policy(spec: &spec::Spec, json: bool) -> ExitCode {
    let builds = deploy::Builds::of(spec);
    let policy = deploy::deployer_policy(&spec.stack, &spec.region, builds);
    let actions = deploy::actions(builds);
    let text = if json {
        let actions: Vec<serde_json::Value> = actions
            .iter()
            .map(|u| {
                serde_json::json!({
                    "action": u.action,
                    "calls": u.calls,
                    "commands": deploy::command_names(u.commands),
                    "checked_inside_another_call": !u.called,
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({"policy": policy, "actions": actions}))
    } else {
        serde_json::to_string_pretty(&policy).map(|doc| {
            let mut out = format!(
                "# The IAM policy of the identity that runs gatehouse-vpc for stack {} ({}).\n\
                 # action                                  needed by\n",
                spec.stack, spec.region
            );
            for u in &actions {
                let note = if u.called {
                    ""
                } else {
                    " (checked inside another call)"
                };
                out.push_str(&format!(
                    "#   {:<40} {}{note}\n",
                    u.action,
                    deploy::command_names(u.commands).join(", ")
                ));
            }
            out + &doc
        })
    };
    match text {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Test hook: exit abruptly (status 137, like SIGKILL) before running step N+1, so tests can
/// interrupt an apply at a chosen point. Unset in normal use.
const KILL_AFTER_STEPS_ENV: &str = "GATEHOUSE_VPC_TEST_KILL_AFTER_STEPS";
static STEPS_RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn progress(step: &Step) {
    let done = STEPS_RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let limit = std::env::var(KILL_AFTER_STEPS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if limit.is_some_and(|n| done >= n) {
        eprintln!("killed after {done} step(s) ({KILL_AFTER_STEPS_ENV})");
        std::process::exit(137);
    }
    eprintln!(
        "{} {:<28} {}",
        step.sign.symbol(),
        step.resource,
        step.detail
    );
}

async fn run(cli: Cli, spec: spec::Spec, env_region: Option<String>) -> anyhow::Result<ExitCode> {
    // No AWS call: the policy follows from the spec alone.
    if let Command::Policy { json } = cli.command {
        return Ok(print_policy(&spec, json));
    }
    let clients = Clients::new(&spec.region, cli.endpoint_url.as_deref()).await;
    // A spec placed into an existing VPC is validated again against what AWS has there
    // (destroy needs only the stack's tag and works after the VPC is gone).
    let resolve = !matches!(cli.command, Command::Destroy { .. });
    let mut spec = match spec.existing_vpc().filter(|_| resolve) {
        None => spec,
        Some(reference) => {
            let facts = aws::observe_network(&clients, reference)
                .await
                .context("reading the existing VPC from AWS")?;
            // The binary was read (and hashed) by the first load: not a second time.
            let again = spec::ReadBinary::No;
            match spec::load_resolved(&cli.spec, env_region.as_deref(), again, Some(&facts)) {
                Ok(resolved) => spec::Spec {
                    bastion: spec::Bastion {
                        binary: spec.bastion.binary.clone(),
                        ..resolved.bastion
                    },
                    ..resolved
                },
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(EXIT_BAD_SPEC));
                }
            }
        }
    };
    let waits = Waits {
        poll: cli.poll_interval,
        timeout: cli.wait_timeout,
    };
    if matches!(cli.command, Command::Plan { .. } | Command::Apply) {
        let same_partition = gatehouse_vpc::names::partition(&spec.region)
            == gatehouse_vpc::names::partition(gatehouse_aws::events::IAM_EVENTS_REGION);
        let trails = if spec.bastion.iam_events_auto && same_partition {
            Some(
                aws::observe::observe_trails(&clients)
                    .await
                    .context("reading the CloudTrail trails (iam_events is not set)")?,
            )
        } else {
            None
        };
        let verdict = trails
            .as_deref()
            .map(gatehouse_vpc::plan::events::trail_for_iam_events);
        if let Some(note) = spec.decide_iam_events(verdict) {
            eprintln!("note: {note}");
        }
    }
    let stack = spec.stack.clone();
    match cli.command {
        Command::Plan { json } => {
            let obs = aws::observe_for(&clients, &spec)
                .await
                .context("reading the stack from AWS")?;
            let plan = plan::plan_apply(&spec, &obs).context("planning")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.render());
            }
        }
        Command::Apply => {
            let n = aws::apply(&clients, &spec, waits, &mut progress)
                .await
                .with_context(|| format!("apply of stack {stack}"))?;
            if n == 0 {
                println!("stack {stack}: no changes");
            } else {
                println!("stack {stack}: applied {n} step(s); now up to date");
            }
        }
        Command::Destroy { delete_audit_log } => {
            let audit = if delete_audit_log {
                plan::AuditLog::Delete
            } else {
                plan::AuditLog::Keep
            };
            let done = aws::destroy(&clients, &stack, audit, waits, &mut progress)
                .await
                .with_context(|| format!("destroy of stack {stack}"))?;
            println!("stack {stack}: destroyed ({} step(s))", done.steps);
            for kept in &done.kept {
                println!("kept: {}: {}", kept.resource, kept.detail);
            }
        }
        // Handled above, before any AWS client exists.
        Command::Policy { .. } => {}
        Command::Output { json, user } => {
            // Before any AWS call: a user name the bastion cannot map is a usage error.
            if let Err(e) = output::login_name(&user) {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_BAD_SPEC));
            }
            let obs = aws::observe(&clients, &stack)
                .await
                .context("reading the stack from AWS")?;
            let out = output::stack_output(&spec, &obs, &user)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                match &out.bastion_address {
                    Some(a) if spec.bastion.scaled_out() => println!(
                        "bastion: {a} (the load balancer of {} replicas)",
                        spec.bastion.replicas
                    ),
                    Some(a) => println!("bastion: {a}"),
                    None => println!("bastion: no address yet (run apply)"),
                }
                if !out.balancer_ips.is_empty() {
                    println!("balancer addresses: {}", out.balancer_ips.join(", "));
                }
                println!("host key parameter: {}", out.host_key_parameter);
                if let Some(group) = &out.bastion_security_group {
                    println!(
                        "bastion security group: {group}: a host the stack did not create \
                         admits it on its ports and carries the tags that name who may reach it:"
                    );
                    for command in &out.admit_commands {
                        println!("  {command}");
                    }
                }
                println!();
                print!("{}", out.ssh_config);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

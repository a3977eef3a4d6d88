//! The AWS side: SDK clients, reading a stack's state into [`Observed`], and the executor.
//! This is the only module that talks to AWS.

pub mod execute;
pub mod observe;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

pub use execute::Executor;
pub use observe::observe;

/// Errors from talking to AWS, each naming the resource it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An AWS API call failed.
    #[error("{resource}: {op} failed: {message}")]
    Aws {
        resource: String,
        op: &'static str,
        code: Option<String>,
        message: String,
    },
    /// AWS answered without a field that must be there.
    #[error("{resource}: {op} answered without {field}")]
    Missing {
        resource: String,
        op: &'static str,
        field: &'static str,
    },
    /// A step referred to a resource that neither exists nor was created earlier.
    #[error("{0}: not known (no id observed or created); re-run plan")]
    Unresolved(String),
    /// Waiting for a resource to reach a state took too long.
    #[error("{resource}: still not {state} after {secs}s")]
    Timeout {
        resource: String,
        state: &'static str,
        secs: u64,
    },
    /// Apply ran its rounds and AWS still differs from the spec.
    #[error("stack {stack}: still {remaining} step(s) after {rounds} rounds:\n{plan}")]
    NotConverged {
        stack: String,
        remaining: usize,
        rounds: usize,
        plan: String,
    },
    /// A plan could not be made (see [`crate::plan::PlanError`]).
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
}

impl Error {
    /// The AWS error code, when there is one (`DependencyViolation`, `NoSuchEntity`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Aws { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True for "it is already gone" answers, which a removal treats as success.
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| {
            c.ends_with(".NotFound")
                || c.ends_with("NotFound")
                || c == "NoSuchEntity"
                || c == "ParameterNotFound"
                || c == "InvalidAllocationID.NotFound"
        })
    }
}

/// Turn an SDK error into [`Error::Aws`] for `resource`.
pub(crate) fn fail<E, R>(resource: impl Into<String>, op: &'static str, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().map(str::to_string);
    let message = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => DisplayErrorContext(&e).to_string(),
    };
    Error::Aws {
        resource: resource.into(),
        op,
        code,
        message,
    }
}

/// The three SDK clients, built from one shared config.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub ssm: aws_sdk_ssm::Client,
}

impl Clients {
    /// Clients for `region`; `endpoint_url` (e.g. moto's) overrides every service endpoint.
    /// Without it, the SDK's own resolution applies (including `AWS_ENDPOINT_URL`).
    pub async fn new(region: &str, endpoint_url: Option<&str>) -> Clients {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()));
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        Clients {
            ec2: aws_sdk_ec2::Client::new(&config),
            iam: aws_sdk_iam::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
        }
    }
}

/// Rounds of observe -> plan -> execute before `apply` gives up (AWS is eventually
/// consistent: a describe right after a create may miss it for a moment).
pub const APPLY_ROUNDS: usize = 3;

/// Make AWS match `spec`. Returns the number of steps run (0: nothing to do).
pub async fn apply(
    c: &Clients,
    spec: &crate::spec::Spec,
    waits: execute::Waits,
    progress: &mut dyn FnMut(&crate::model::Step),
) -> Result<usize, Error> {
    let mut total = 0;
    for _ in 0..APPLY_ROUNDS {
        let obs = observe(c, &spec.stack).await?;
        let plan = crate::plan::plan_apply(spec, &obs)?;
        if plan.is_empty() {
            return Ok(total);
        }
        total += plan.steps.len();
        Executor::new(c, Some(spec), waits)
            .run(&plan, progress)
            .await?;
    }
    let obs = observe(c, &spec.stack).await?;
    let plan = crate::plan::plan_apply(spec, &obs)?;
    if plan.is_empty() {
        Ok(total)
    } else {
        Err(Error::NotConverged {
            stack: spec.stack.clone(),
            remaining: plan.steps.len(),
            rounds: APPLY_ROUNDS,
            plan: plan.render(),
        })
    }
}

/// Remove every resource tagged with the stack (and nothing else). Returns the steps run.
pub async fn destroy(
    c: &Clients,
    stack: &str,
    waits: execute::Waits,
    progress: &mut dyn FnMut(&crate::model::Step),
) -> Result<usize, Error> {
    let mut total = 0;
    for _ in 0..APPLY_ROUNDS {
        let obs = observe(c, stack).await?;
        let plan = crate::plan::plan_destroy(stack, &obs);
        if plan.is_empty() {
            return Ok(total);
        }
        total += plan.steps.len();
        Executor::new(c, None, waits).run(&plan, progress).await?;
    }
    let obs = observe(c, stack).await?;
    let plan = crate::plan::plan_destroy(stack, &obs);
    if plan.is_empty() {
        Ok(total)
    } else {
        Err(Error::NotConverged {
            stack: stack.to_string(),
            remaining: plan.steps.len(),
            rounds: APPLY_ROUNDS,
            plan: plan.render(),
        })
    }
}

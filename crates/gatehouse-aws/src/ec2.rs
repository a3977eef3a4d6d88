//! EC2 fetcher: running instances carrying the groups tag, in the configured VPCs.
//!
//! The config requires at least one VPC id (`aws.vpc_ids`): the bastion can route only into
//! its own VPC and the VPCs peered with it, and listing every VPC of the region would mix in
//! VPCs with overlapping CIDRs, where one private address is two instances.
//!
//! One paginated DescribeInstances per refresh (`ceil(M/1000)` calls for M matching
//! instances), filtered on the server side by state, tag key and VPC, so instances that can
//! never be targets cost nothing.

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;

use crate::actions;
use crate::build::InstanceRecord;
use crate::calls::Calls;
use crate::error::AwsError;

/// Instances per page asked for (EC2's maximum).
const PAGE: i32 = 1000;
/// A listing longer than this many pages is treated as a broken answer (a token loop).
const MAX_PAGES: usize = 10_000;

/// Reads the candidate instances from EC2.
#[derive(Debug, Clone)]
pub struct Ec2Fetcher {
    client: Client,
    vpc_ids: Vec<String>,
    groups_tag: String,
}

impl Ec2Fetcher {
    /// A fetcher over `client` for instances in `vpc_ids` that carry the tag key
    /// `groups_tag`. With no VPC id, no instance is listed (never every VPC of the region).
    pub fn new(client: Client, vpc_ids: Vec<String>, groups_tag: String) -> Self {
        Ec2Fetcher {
            client,
            vpc_ids,
            groups_tag,
        }
    }

    fn filters(&self) -> Vec<Filter> {
        let mut filters = vec![
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
            Filter::builder()
                .name("tag-key")
                .values(&self.groups_tag)
                .build(),
        ];
        filters.push(
            Filter::builder()
                .name("vpc-id")
                .set_values(Some(self.vpc_ids.clone()))
                .build(),
        );
        filters
    }

    /// Every matching instance. Fails as a whole if any page fails.
    pub async fn fetch(&self, calls: &Calls) -> Result<Vec<InstanceRecord>, AwsError> {
        let mut out = Vec::new();
        if self.vpc_ids.is_empty() {
            return Ok(out);
        }
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            calls.count(actions::DESCRIBE_INSTANCES);
            let page = self
                .client
                .describe_instances()
                .set_filters(Some(self.filters()))
                .set_next_token(token.clone())
                .max_results(PAGE)
                .send()
                .await
                .map_err(|e| AwsError::call("ec2", "DescribeInstances", &e))?;
            for reservation in page.reservations() {
                for instance in reservation.instances() {
                    let Some(id) = instance.instance_id() else {
                        continue;
                    };
                    out.push(InstanceRecord {
                        id: id.to_owned(),
                        state: instance
                            .state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str().to_owned())
                            .unwrap_or_default(),
                        private_ip: instance.private_ip_address().map(str::to_owned),
                        private_dns: instance.private_dns_name().map(str::to_owned),
                        tags: instance
                            .tags()
                            .iter()
                            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                            .collect(),
                    });
                }
            }
            match page.next_token().filter(|t| !t.is_empty()) {
                None => return Ok(out),
                Some(next) if token.as_deref() == Some(next) => {
                    return Err(AwsError::Suspicious(
                        "EC2 DescribeInstances: the same page token twice".to_owned(),
                    ))
                }
                Some(next) => token = Some(next.to_owned()),
            }
        }
        Err(AwsError::Suspicious(format!(
            "EC2 DescribeInstances: more than {MAX_PAGES} pages"
        )))
    }
}

//! IAM fetcher: users (with an optional path prefix), their Active SSH public keys, their
//! tags, and (optionally) their membership in prefixed IAM groups. Thin: it turns answers into
//! [`UserRecord`]s and leaves every decision to [`crate::build`].
//!
//! Calls per refresh, for N users under the path prefix of whom K have an Active key, G IAM
//! groups with the prefix and U keys not seen before: `ceil(N/1000)` ListUsers +
//! N ListSSHPublicKeys + K ListUserTags + (with `iam_group_prefix`: `ceil(groups/1000)`
//! ListGroups + G GetGroup) + U GetSSHPublicKey. Key bodies are fetched once per (user, key
//! id, upload date) and cached; a key that is re-uploaded gets a new id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_iam::types::{EncodingType, StatusType};
use aws_sdk_iam::Client;
use ssh_key::PublicKey;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::build::UserRecord;
use crate::calls::Calls;
use crate::error::AwsError;

/// Per-user calls in flight at once: fast enough for thousands of users per refresh, gentle
/// enough to stay well under IAM's request rate.
const CONCURRENCY: usize = 8;
/// Items per page asked for (IAM's maximum).
const PAGE: i32 = 1000;
/// A listing longer than this many pages is treated as a broken answer (a marker loop).
const MAX_PAGES: usize = 10_000;

/// A parsed key body, cached by (user, key id) with the upload date it had.
#[derive(Debug, Clone)]
struct CachedKey {
    uploaded: String,
    key: Result<PublicKey, String>,
}

/// What one user's per-user calls found.
struct UserKeys {
    name: String,
    /// Active keys: (id, upload date).
    active: Vec<(String, String)>,
    tags: Vec<(String, String)>,
}

/// Reads users and keys from IAM, remembering key bodies between refreshes.
#[derive(Debug)]
pub struct IamFetcher {
    client: Client,
    path_prefix: Option<String>,
    group_prefix: Option<String>,
    cache: HashMap<(String, String), CachedKey>,
}

impl IamFetcher {
    /// A fetcher over `client`.
    pub fn new(client: Client, path_prefix: Option<String>, group_prefix: Option<String>) -> Self {
        IamFetcher {
            client,
            path_prefix,
            group_prefix,
            cache: HashMap::new(),
        }
    }

    /// Every user with an Active key, with tags, IAM groups and parsed keys. Fails as a whole
    /// if any call fails: a partial listing is never returned. Newly seen keys that do not
    /// parse are returned as errors (and logged by the caller), not dropped silently.
    pub async fn fetch(&mut self, calls: &Calls) -> Result<Vec<UserRecord>, AwsError> {
        let names = self.list_users(calls).await?;
        let per_user = self.per_user(names, calls).await?;
        let groups = match &self.group_prefix {
            Some(prefix) => self.group_members(prefix, calls).await?,
            None => HashMap::new(),
        };
        let mut seen = HashSet::new();
        let mut users = Vec::new();
        for user in per_user {
            let mut keys = Vec::new();
            for (id, uploaded) in &user.active {
                let slot = (user.name.clone(), id.clone());
                let cached = self.cache.get(&slot).filter(|c| &c.uploaded == uploaded);
                let key = match cached {
                    Some(c) => c.key.clone(),
                    None => {
                        let key = self.get_key(&user.name, id, calls).await?;
                        self.cache.insert(
                            slot.clone(),
                            CachedKey {
                                uploaded: uploaded.clone(),
                                key: key.clone(),
                            },
                        );
                        key
                    }
                };
                seen.insert(slot);
                keys.push((id.clone(), key));
            }
            users.push(UserRecord {
                iam_groups: groups.get(&user.name).cloned().unwrap_or_default(),
                name: user.name,
                tags: user.tags,
                keys,
            });
        }
        // Forget keys that are gone or inactive: a re-activated key is fetched again.
        self.cache.retain(|slot, _| seen.contains(slot));
        Ok(users)
    }

    async fn list_users(&self, calls: &Calls) -> Result<Vec<String>, AwsError> {
        let mut names = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            calls.count("iam:ListUsers");
            let page = self
                .client
                .list_users()
                .set_path_prefix(self.path_prefix.clone())
                .set_marker(marker.clone())
                .max_items(PAGE)
                .send()
                .await
                .map_err(|e| AwsError::call("iam", "ListUsers", &e))?;
            names.extend(page.users().iter().map(|u| u.user_name().to_owned()));
            match next_marker(page.is_truncated(), page.marker(), &marker, "ListUsers")? {
                Some(next) => marker = Some(next),
                None => return Ok(names),
            }
        }
        Err(too_many_pages("ListUsers"))
    }

    /// ListSSHPublicKeys for every user, then ListUserTags for those with an Active key.
    async fn per_user(&self, names: Vec<String>, calls: &Calls) -> Result<Vec<UserKeys>, AwsError> {
        let limit = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = JoinSet::new();
        for (index, name) in names.into_iter().enumerate() {
            let client = self.client.clone();
            let calls = calls.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                one_user(&client, name, &calls).await.map(|u| (index, u))
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok((index, Some(user)))) => out.push((index, user)),
                Ok(Ok((_, None))) => {}
                Ok(Err(e)) => {
                    tasks.abort_all();
                    return Err(e);
                }
                Err(join) => {
                    tasks.abort_all();
                    return Err(AwsError::Suspicious(format!(
                        "an IAM fetch task failed: {join}"
                    )));
                }
            }
        }
        out.sort_by_key(|(index, _)| *index);
        Ok(out.into_iter().map(|(_, u)| u).collect())
    }

    /// Members of every IAM group whose name starts with `prefix`: user -> group names.
    async fn group_members(
        &self,
        prefix: &str,
        calls: &Calls,
    ) -> Result<HashMap<String, Vec<String>>, AwsError> {
        let mut groups = Vec::new();
        let mut marker: Option<String> = None;
        let mut done = false;
        for _ in 0..MAX_PAGES {
            calls.count("iam:ListGroups");
            let page = self
                .client
                .list_groups()
                .set_marker(marker.clone())
                .max_items(PAGE)
                .send()
                .await
                .map_err(|e| AwsError::call("iam", "ListGroups", &e))?;
            groups.extend(
                page.groups()
                    .iter()
                    .map(|g| g.group_name().to_owned())
                    .filter(|g| g.starts_with(prefix)),
            );
            match next_marker(page.is_truncated(), page.marker(), &marker, "ListGroups")? {
                Some(next) => marker = Some(next),
                None => {
                    done = true;
                    break;
                }
            }
        }
        if !done {
            return Err(too_many_pages("ListGroups"));
        }
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        for group in groups {
            let mut marker: Option<String> = None;
            let mut done = false;
            for _ in 0..MAX_PAGES {
                calls.count("iam:GetGroup");
                let page = self
                    .client
                    .get_group()
                    .group_name(&group)
                    .set_marker(marker.clone())
                    .max_items(PAGE)
                    .send()
                    .await
                    .map_err(|e| AwsError::call("iam", "GetGroup", &e))?;
                for user in page.users() {
                    members
                        .entry(user.user_name().to_owned())
                        .or_default()
                        .push(group.clone());
                }
                match next_marker(page.is_truncated(), page.marker(), &marker, "GetGroup")? {
                    Some(next) => marker = Some(next),
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            if !done {
                return Err(too_many_pages("GetGroup"));
            }
        }
        Ok(members)
    }

    /// One key body, parsed under the config's key rules. A call failure fails the refresh; a
    /// body that is not an acceptable key is an `Ok(Err(why))`.
    async fn get_key(
        &self,
        user: &str,
        id: &str,
        calls: &Calls,
    ) -> Result<Result<PublicKey, String>, AwsError> {
        calls.count("iam:GetSSHPublicKey");
        let answer = self
            .client
            .get_ssh_public_key()
            .user_name(user)
            .ssh_public_key_id(id)
            .encoding(EncodingType::Ssh)
            .send()
            .await
            .map_err(|e| AwsError::call("iam", "GetSSHPublicKey", &e))?;
        Ok(match answer.ssh_public_key() {
            None => Err("IAM returned no key body".to_owned()),
            Some(key) => gatehouse_config::parse_public_key(key.ssh_public_key_body()),
        })
    }
}

/// The per-user calls for `name`: `None` when the user has no Active key (then no tags are
/// read).
async fn one_user(
    client: &Client,
    name: String,
    calls: &Calls,
) -> Result<Option<UserKeys>, AwsError> {
    let mut active = Vec::new();
    let mut marker: Option<String> = None;
    let mut done = false;
    for _ in 0..MAX_PAGES {
        calls.count("iam:ListSSHPublicKeys");
        let page = client
            .list_ssh_public_keys()
            .user_name(&name)
            .set_marker(marker.clone())
            .max_items(PAGE)
            .send()
            .await
            .map_err(|e| AwsError::call("iam", "ListSSHPublicKeys", &e))?;
        for key in page.ssh_public_keys() {
            if key.status() == &StatusType::Active {
                active.push((
                    key.ssh_public_key_id().to_owned(),
                    key.upload_date().to_string(),
                ));
            }
        }
        match next_marker(
            page.is_truncated(),
            page.marker(),
            &marker,
            "ListSSHPublicKeys",
        )? {
            Some(next) => marker = Some(next),
            None => {
                done = true;
                break;
            }
        }
    }
    if !done {
        return Err(too_many_pages("ListSSHPublicKeys"));
    }
    if active.is_empty() {
        return Ok(None);
    }
    let mut tags = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        calls.count("iam:ListUserTags");
        let page = client
            .list_user_tags()
            .user_name(&name)
            .set_marker(marker.clone())
            .max_items(PAGE)
            .send()
            .await
            .map_err(|e| AwsError::call("iam", "ListUserTags", &e))?;
        tags.extend(
            page.tags()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned())),
        );
        match next_marker(page.is_truncated(), page.marker(), &marker, "ListUserTags")? {
            Some(next) => marker = Some(next),
            None => return Ok(Some(UserKeys { name, active, tags })),
        }
    }
    Err(too_many_pages("ListUserTags"))
}

/// The marker of the next page, or `None` at the end. A truncated page without a new marker
/// is a broken answer, not the end of the list.
fn next_marker(
    truncated: bool,
    marker: Option<&str>,
    previous: &Option<String>,
    operation: &str,
) -> Result<Option<String>, AwsError> {
    if !truncated {
        return Ok(None);
    }
    match marker {
        Some(m) if !m.is_empty() && previous.as_deref() != Some(m) => Ok(Some(m.to_owned())),
        _ => Err(AwsError::Suspicious(format!(
            "IAM {operation}: a truncated page without a new marker"
        ))),
    }
}

fn too_many_pages(operation: &str) -> AwsError {
    AwsError::Suspicious(format!("IAM {operation}: more than {MAX_PAGES} pages"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_ends_only_on_an_untruncated_page() {
        assert_eq!(next_marker(false, Some("m"), &None, "X").unwrap(), None);
        assert_eq!(
            next_marker(true, Some("m2"), &Some("m1".into()), "X").unwrap(),
            Some("m2".into())
        );
        assert!(next_marker(true, None, &None, "X").is_err());
        assert!(next_marker(true, Some(""), &None, "X").is_err());
        assert!(next_marker(true, Some("m"), &Some("m".into()), "X").is_err());
    }
}

//! IAM fetcher: one paginated GetAccountAuthorizationDetails (users only) names every user
//! with their path, tags and IAM groups; only the users who may be gatehouse users (the groups
//! tag, or an IAM group with `iam_group_prefix`) have their SSH keys listed; only key bodies
//! not seen before are fetched. Thin: it turns answers into [`UserRecord`]s and leaves every
//! decision to [`crate::build`].
//!
//! Calls per refresh, for N users in the account, C of them tagged or in a prefixed group and
//! U keys not seen before: `ceil(N/1000)` GetAccountAuthorizationDetails + C
//! ListSSHPublicKeys + U GetSSHPublicKey, the per-user calls 8 at a time and at most
//! `aws.iam_calls_per_second` (bursts of twice as many). (ListUsers would
//! need a ListUserTags per user and a GetGroup per prefixed group besides: about N + K + G
//! calls.) `iam_path_prefix` is applied to the answer: the account listing has no path filter.
//! Key bodies are cached by (user, key id, upload date); a re-uploaded key gets a new id.
//!
//! With roles on (`[sso]`, see [`IamFetcher::reading_roles`]) the same listing also names
//! every role (the Role filter: no other action), and the roles that carry the groups tag
//! come back as [`RoleRecord`]s; a role change event re-reads only the roles (one call per
//! 1,000 roles).
//!
//! IAM changes while it is listed. A user deleted after the account listing named them
//! answers `NoSuchEntity` to ListSSHPublicKeys: that user is simply gone from this listing,
//! logged at info, and the rest of the listing stands. Likewise a key deleted after it was
//! listed (GetSSHPublicKey) is not one of the user's keys. Any other failed call fails the
//! listing.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use aws_sdk_iam::types::{EncodingType, EntityType, StatusType};
use aws_sdk_iam::Client;
use ssh_key::PublicKey;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::actions;
use crate::build::{RoleRecord, UserRecord};
use crate::calls::Calls;
use crate::error::AwsError;
use crate::pace::Pace;

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

/// A user as the account listing names them.
#[derive(Debug, Clone)]
struct AccountUser {
    name: String,
    tags: Vec<(String, String)>,
    /// Every IAM group the user is in.
    groups: Vec<String>,
}

/// One sweep of IAM: the users (with keys) and, with roles on, the roles that carry the
/// groups tag.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IamListing {
    /// The candidate users with an Active key.
    pub users: Vec<UserRecord>,
    /// The roles that carry the groups tag (none with roles off).
    pub roles: Vec<RoleRecord>,
}

/// Reads users and keys from IAM, remembering key bodies between refreshes.
#[derive(Debug)]
pub struct IamFetcher {
    client: Client,
    path_prefix: Option<String>,
    group_prefix: Option<String>,
    groups_tag: String,
    /// Whether roles are read too.
    roles: bool,
    cache: HashMap<(String, String), CachedKey>,
    /// The pace of the per-user calls.
    pace: Arc<Pace>,
}

impl IamFetcher {
    /// A fetcher over `client` for users under `path_prefix` who carry the tag key
    /// `groups_tag` or are in an IAM group starting with `group_prefix`.
    /// Per-user calls go at `calls_per_second` (bursts of twice as many).
    pub fn new(
        client: Client,
        path_prefix: Option<String>,
        group_prefix: Option<String>,
        groups_tag: String,
        calls_per_second: u32,
    ) -> Self {
        IamFetcher {
            client,
            path_prefix,
            group_prefix,
            groups_tag,
            roles: false,
            cache: HashMap::new(),
            pace: Arc::new(Pace::new(calls_per_second)),
        }
    }

    /// The same fetcher, also reading the roles that carry the groups tag (for `[sso]`).
    pub fn reading_roles(mut self) -> Self {
        self.roles = true;
        self
    }

    /// Every candidate user with an Active key, with tags, prefixed IAM groups and parsed keys.
    /// Fails as a whole if any call fails: a partial listing is never returned. Newly seen
    /// keys that do not parse are returned as errors (and logged by the caller), not dropped
    /// silently.
    pub async fn fetch(&mut self, calls: &Calls) -> Result<IamListing, AwsError> {
        let wanted = Wanted {
            users: true,
            roles: self.roles,
        };
        let (account_users, roles) = self.user_reader().account(wanted, calls).await?;
        let candidates: Vec<AccountUser> = account_users
            .into_iter()
            .filter(|u| self.may_be_gatehouse_user(u))
            .collect();
        let client = self.client.clone();
        let pace = self.pace.clone();
        let listed = concurrently(candidates, |user| {
            let (client, calls, pace) = (client.clone(), calls.clone(), pace.clone());
            async move {
                let active = active_keys(&client, &user.name, &calls, &pace).await?;
                Ok(active
                    .filter(|keys| !keys.is_empty())
                    .map(|keys| (user, keys)))
            }
        })
        .await?;
        // Key bodies not cached yet (a cold start: every key), all at once.
        let wanted: Vec<(String, String, String)> = listed
            .iter()
            .flat_map(|(user, keys)| {
                keys.iter()
                    .filter(|(id, uploaded)| {
                        self.cache
                            .get(&(user.name.clone(), id.clone()))
                            .is_none_or(|c| &c.uploaded != uploaded)
                    })
                    .map(|(id, uploaded)| (user.name.clone(), id.clone(), uploaded.clone()))
            })
            .collect();
        let fetched = concurrently(wanted, |(user, id, uploaded)| {
            let (client, calls, pace) = (client.clone(), calls.clone(), pace.clone());
            async move {
                pace.ready().await;
                let key = get_key(&client, &user, &id, &calls).await?;
                if key.is_none() {
                    tracing::info!(user = %user, key = %id,
                        "IAM key deleted since it was listed (GetSSHPublicKey: NoSuchEntity); \
                         not one of the user's keys in this listing");
                }
                Ok(key.map(|key| (user, id, uploaded, key)))
            }
        })
        .await?;
        for (user, id, uploaded, key) in fetched {
            self.cache.insert((user, id), CachedKey { uploaded, key });
        }
        let mut seen = HashSet::new();
        let mut users = Vec::new();
        for (user, active) in listed {
            let mut keys = Vec::new();
            for (id, uploaded) in active {
                let slot = (user.name.clone(), id);
                if let Some(cached) = self.cache.get(&slot).filter(|c| c.uploaded == uploaded) {
                    keys.push((slot.1.clone(), cached.key.clone()));
                    seen.insert(slot);
                }
            }
            let iam_groups = match &self.group_prefix {
                Some(prefix) => user
                    .groups
                    .into_iter()
                    .filter(|g| g.starts_with(prefix.as_str()))
                    .collect(),
                None => Vec::new(),
            };
            users.push(UserRecord {
                name: user.name,
                tags: user.tags,
                iam_groups,
                keys,
            });
        }
        // Forget keys that are gone or inactive: a re-activated key is fetched again.
        self.cache.retain(|slot, _| seen.contains(slot));
        Ok(IamListing { users, roles })
    }

    /// Whether `user` can have a gatehouse group: the groups tag, or a prefixed IAM group
    /// ([`crate::build::identities`] decides whether they do).
    fn may_be_gatehouse_user(&self, user: &AccountUser) -> bool {
        user.tags.iter().any(|(k, _)| k == &self.groups_tag)
            || self
                .group_prefix
                .as_deref()
                .is_some_and(|p| user.groups.iter().any(|g| g.starts_with(p)))
    }
}

/// What an account listing asks for.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    users: bool,
    roles: bool,
}

/// Every user of the account under `path_prefix`, with tags and IAM groups, and every role
/// under it that carries the tag `groups_tag`, as `wanted`: one paginated
/// GetAccountAuthorizationDetails.
async fn account_details(
    client: &Client,
    path_prefix: Option<&str>,
    wanted: Wanted,
    groups_tag: &str,
    calls: &Calls,
) -> Result<(Vec<AccountUser>, Vec<RoleRecord>), AwsError> {
    let (mut users, mut tagged) = (Vec::new(), Vec::new());
    let under = |path: Option<&str>| path_prefix.is_none_or(|p| path.unwrap_or("/").starts_with(p));
    let tags_of = |tags: &[aws_sdk_iam::types::Tag]| -> Vec<(String, String)> {
        tags.iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect()
    };
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        calls.count(actions::GET_ACCOUNT_AUTHORIZATION_DETAILS);
        let mut ask = client.get_account_authorization_details();
        if wanted.users {
            ask = ask.filter(EntityType::User);
        }
        if wanted.roles {
            ask = ask.filter(EntityType::Role);
        }
        let page = ask
            .set_marker(marker.clone())
            .max_items(PAGE)
            .send()
            .await
            .map_err(|e| AwsError::call("iam", "GetAccountAuthorizationDetails", &e))?;
        for user in page.user_detail_list() {
            let Some(name) = user.user_name() else {
                continue;
            };
            if !under(user.path()) {
                continue;
            }
            users.push(AccountUser {
                name: name.to_owned(),
                tags: tags_of(user.tags()),
                groups: user.group_list().to_vec(),
            });
        }
        if wanted.roles {
            for role in page.role_detail_list() {
                let (Some(name), Some(arn)) = (role.role_name(), role.arn()) else {
                    continue;
                };
                let tags = tags_of(role.tags());
                if under(role.path()) && tags.iter().any(|(k, _)| k == groups_tag) {
                    tagged.push(RoleRecord {
                        name: name.to_owned(),
                        arn: arn.to_owned(),
                        tags,
                    });
                }
            }
        }
        match next_marker(
            page.is_truncated(),
            page.marker(),
            &marker,
            "GetAccountAuthorizationDetails",
        )? {
            Some(next) => marker = Some(next),
            None => return Ok((users, tagged)),
        }
    }
    Err(too_many_pages("GetAccountAuthorizationDetails"))
}

/// Re-reads single users (those an IAM change event names), with the listing's client,
/// settings and pace but without its key cache: an event is rare, and a key it concerns has
/// usually just changed.
#[derive(Debug, Clone)]
pub struct UserReader {
    client: Client,
    path_prefix: Option<String>,
    group_prefix: Option<String>,
    groups_tag: String,
    roles: bool,
    pace: Arc<Pace>,
}

impl IamFetcher {
    /// A reader of single users that shares this fetcher's client, settings and pace.
    pub fn user_reader(&self) -> UserReader {
        UserReader {
            client: self.client.clone(),
            path_prefix: self.path_prefix.clone(),
            group_prefix: self.group_prefix.clone(),
            groups_tag: self.groups_tag.clone(),
            roles: self.roles,
            pace: self.pace.clone(),
        }
    }
}

impl UserReader {
    /// A new fetcher with this reader's client, settings and pace, and an empty key cache
    /// (for when a sweep's fetcher was lost with its task).
    pub fn fetcher(&self) -> IamFetcher {
        IamFetcher {
            client: self.client.clone(),
            path_prefix: self.path_prefix.clone(),
            group_prefix: self.group_prefix.clone(),
            groups_tag: self.groups_tag.clone(),
            roles: self.roles,
            cache: HashMap::new(),
            pace: self.pace.clone(),
        }
    }

    /// Whether roles are read (`[sso]`): role change events then re-read them.
    pub fn reads_roles(&self) -> bool {
        self.roles
    }

    /// The roles that carry the groups tag, as a sweep would see them now (for a role change
    /// event): one GetAccountAuthorizationDetails per 1,000 roles, users not included.
    /// Nothing (and no call) with roles off.
    ///
    /// # Errors
    /// The call failed.
    pub async fn roles(&self, calls: &Calls) -> Result<Vec<RoleRecord>, AwsError> {
        if !self.roles {
            return Ok(Vec::new());
        }
        self.pace.ready().await;
        let wanted = Wanted {
            users: false,
            roles: true,
        };
        Ok(self.account(wanted, calls).await?.1)
    }

    /// [`account_details`] with this reader's client, path prefix and groups tag.
    async fn account(
        &self,
        wanted: Wanted,
        calls: &Calls,
    ) -> Result<(Vec<AccountUser>, Vec<RoleRecord>), AwsError> {
        account_details(
            &self.client,
            self.path_prefix.as_deref(),
            wanted,
            &self.groups_tag,
            calls,
        )
        .await
    }

    /// `name` as the listing would see it now: `None` when the user is gone, outside the path
    /// prefix, cannot be a gatehouse user or has no Active key. Calls: GetUser, then
    /// (with `iam_group_prefix`) ListGroupsForUser, then ListSSHPublicKeys and one
    /// GetSSHPublicKey per Active key.
    ///
    /// # Errors
    /// Any failed call other than `NoSuchEntity`.
    pub async fn read(&self, name: &str, calls: &Calls) -> Result<Option<UserRecord>, AwsError> {
        self.pace.ready().await;
        calls.count(actions::GET_USER);
        let answer = self
            .client
            .get_user()
            .user_name(name)
            .send()
            .await
            .map_err(|e| AwsError::call("iam", "GetUser", &e));
        let Some(user) = unless_gone(answer)?.and_then(|a| a.user) else {
            return Ok(None);
        };
        // IAM user names are case-insensitive: `name` is how an event spelled it, and may
        // differ in case from the user's name. The record (and every later call) takes IAM's.
        let name = user.user_name();
        let path = user.path();
        if self
            .path_prefix
            .as_deref()
            .is_some_and(|prefix| !path.starts_with(prefix))
        {
            return Ok(None);
        }
        let tags: Vec<(String, String)> = user
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
        let iam_groups = match &self.group_prefix {
            Some(prefix) => match self.groups(name, calls).await? {
                Some(groups) => groups
                    .into_iter()
                    .filter(|g| g.starts_with(prefix.as_str()))
                    .collect(),
                None => return Ok(None),
            },
            None => Vec::new(),
        };
        let candidate = tags.iter().any(|(k, _)| k == &self.groups_tag) || !iam_groups.is_empty();
        if !candidate {
            return Ok(None);
        }
        let Some(active) = active_keys(&self.client, name, calls, &self.pace).await? else {
            return Ok(None);
        };
        let mut keys = Vec::new();
        for (id, _) in active {
            self.pace.ready().await;
            if let Some(key) = get_key(&self.client, name, &id, calls).await? {
                keys.push((id, key));
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(UserRecord {
            name: name.to_owned(),
            tags,
            iam_groups,
            keys,
        }))
    }

    /// Every IAM group `name` is in; `None` when the user is gone.
    async fn groups(&self, name: &str, calls: &Calls) -> Result<Option<Vec<String>>, AwsError> {
        let mut groups = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGES {
            self.pace.ready().await;
            calls.count(actions::LIST_GROUPS_FOR_USER);
            let answer = self
                .client
                .list_groups_for_user()
                .user_name(name)
                .set_marker(marker.clone())
                .max_items(PAGE)
                .send()
                .await
                .map_err(|e| AwsError::call("iam", "ListGroupsForUser", &e));
            let Some(page) = unless_gone(answer)? else {
                return Ok(None);
            };
            groups.extend(page.groups().iter().map(|g| g.group_name().to_owned()));
            match next_marker(
                page.is_truncated(),
                page.marker(),
                &marker,
                "ListGroupsForUser",
            )? {
                Some(next) => marker = Some(next),
                None => return Ok(Some(groups)),
            }
        }
        Err(too_many_pages("ListGroupsForUser"))
    }
}

/// Runs `job` on every item, [`CONCURRENCY`] at a time, keeping the items' order and dropping
/// `None`s. The first error fails the whole (the other jobs are abandoned).
async fn concurrently<T, R, Fut>(items: Vec<T>, job: impl Fn(T) -> Fut) -> Result<Vec<R>, AwsError>
where
    R: Send + 'static,
    Fut: Future<Output = Result<Option<R>, AwsError>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (index, item) in items.into_iter().enumerate() {
        let limit = limit.clone();
        let work = job(item);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            work.await.map(|r| (index, r))
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((index, Some(r)))) => out.push((index, r)),
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
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// One key body, parsed under the config's key rules. A call failure fails the refresh; a
/// body that is not an acceptable key is an `Ok(Some(Err(why)))`; a key (or user) deleted
/// since it was listed is `Ok(None)`.
async fn get_key(
    client: &Client,
    user: &str,
    id: &str,
    calls: &Calls,
) -> Result<Option<Result<PublicKey, String>>, AwsError> {
    calls.count(actions::GET_SSH_PUBLIC_KEY);
    let answer = client
        .get_ssh_public_key()
        .user_name(user)
        .ssh_public_key_id(id)
        .encoding(EncodingType::Ssh)
        .send()
        .await
        .map_err(|e| AwsError::call("iam", "GetSSHPublicKey", &e));
    let Some(answer) = unless_gone(answer)? else {
        return Ok(None);
    };
    Ok(Some(match answer.ssh_public_key() {
        None => Err("IAM returned no key body".to_owned()),
        Some(key) => gatehouse_config::parse_public_key(key.ssh_public_key_body()),
    }))
}

/// `None` for IAM's `NoSuchEntity` (the user or key was deleted after it was listed), the
/// answer otherwise; any other error stays an error.
fn unless_gone<T>(answer: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
    match answer {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_no_such_entity() => Ok(None),
        Err(e) => Err(e),
    }
}

/// `user`'s Active keys as (id, upload date); `None` when the user was deleted since the
/// account listing named them.
async fn active_keys(
    client: &Client,
    name: &str,
    calls: &Calls,
    pace: &Pace,
) -> Result<Option<Vec<(String, String)>>, AwsError> {
    let mut active = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        pace.ready().await;
        calls.count(actions::LIST_SSH_PUBLIC_KEYS);
        let answer = client
            .list_ssh_public_keys()
            .user_name(name)
            .set_marker(marker.clone())
            .max_items(PAGE)
            .send()
            .await
            .map_err(|e| AwsError::call("iam", "ListSSHPublicKeys", &e));
        let Some(page) = unless_gone(answer)? else {
            tracing::info!(user = %name,
                "IAM user deleted since the account listing named it (ListSSHPublicKeys: \
                 NoSuchEntity); left out of this listing");
            return Ok(None);
        };
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
            None => return Ok(Some(active)),
        }
    }
    Err(too_many_pages("ListSSHPublicKeys"))
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

    use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMzQnTZ1QB2clN1RVs8twk5/t+5CEwiIXdcNoxcQmsgc alice@laptop";
    const K2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINmlGXI7OASyXk4O6d+gTUjFFoKRkucGwcPn6U7HGaSw dan@laptop";
    const DATE: &str = "2024-01-01T00:00:00Z";

    /// One IAM call as the fake sees it: the action and its form parameters.
    struct Call {
        action: String,
        params: HashMap<String, String>,
    }

    impl Call {
        fn param(&self, key: &str) -> &str {
            self.params.get(key).map(String::as_str).unwrap_or("")
        }
    }

    type Answer = (u16, String);

    /// An IAM endpoint on this process's loopback that answers each call with
    /// `answer(call)`, and a client for it. Only loopback is contacted.
    async fn fake_iam(answer: fn(&Call) -> Answer) -> Client {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, answer));
            }
        });
        let config = aws_sdk_iam::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(format!("http://{addr}"))
            .build();
        Client::from_conf(config)
    }

    /// HTTP/1.1 with keep-alive, just enough for the SDK's form-encoded POSTs.
    async fn serve(mut stream: TcpStream, answer: fn(&Call) -> Answer) {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
            let params: HashMap<String, String> = String::from_utf8_lossy(&body)
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect();
            let call = Call {
                action: params.get("Action").cloned().unwrap_or_default(),
                params,
            };
            let (status, xml) = answer(&call);
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                xml.len()
            );
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Form decoding: `+` is a space, `%XX` a byte.
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn ok(action: &str, result: &str) -> Answer {
        (
            200,
            format!(
                "<{action}Response xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">\
                 <{action}Result>{result}</{action}Result>\
                 <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></{action}Response>"
            ),
        )
    }

    fn error(status: u16, code: &str, message: &str) -> Answer {
        (
            status,
            format!(
                "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error>\
                 <Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>\
                 <RequestId>r</RequestId></ErrorResponse>"
            ),
        )
    }

    fn no_such_user(call: &Call) -> Answer {
        let user = call.param("UserName");
        error(
            404,
            "NoSuchEntity",
            &format!("The user with name {user} cannot be found."),
        )
    }

    /// One user of the account listing: (name, path, IAM groups, groups tag value).
    fn account_user(name: &str, path: &str, groups: &[&str], tag: Option<&str>) -> String {
        let groups: String = groups
            .iter()
            .map(|g| format!("<member>{g}</member>"))
            .collect();
        let tags = tag
            .map(|v| format!("<member><Key>gatehouse:groups</Key><Value>{v}</Value></member>"))
            .unwrap_or_default();
        format!(
            "<member><Path>{path}</Path><UserName>{name}</UserName><UserId>AIDA{name}</UserId>\
             <Arn>arn:aws:iam::123456789012:user{path}{name}</Arn><CreateDate>{DATE}</CreateDate>\
             <GroupList>{groups}</GroupList><Tags>{tags}</Tags></member>"
        )
    }

    /// IAM during deletions: alice is whole (tagged, and in gatehouse-ops); bob was deleted
    /// after the account listing named him (NoSuchEntity from ListSSHPublicKeys); dan lost one
    /// of his two keys after they were listed (from GetSSHPublicKey); carol has no gatehouse
    /// group (no tag, IAM group other-team) and eve is under /staff/ (both tagged), so their
    /// keys are listed only when they can be gatehouse users.
    fn iam_during_deletions(call: &Call) -> Answer {
        let user = call.param("UserName");
        match (call.action.as_str(), user) {
            ("GetAccountAuthorizationDetails", _) => {
                assert_eq!(call.param("Filter.member.1"), "User", "users only");
                ok(
                    "GetAccountAuthorizationDetails",
                    &format!(
                        "<UserDetailList>{}{}{}{}{}</UserDetailList>\
                         <IsTruncated>false</IsTruncated>",
                        account_user("alice", "/", &["gatehouse-ops"], Some("research")),
                        account_user("bob", "/", &[], Some("research")),
                        account_user("carol", "/", &["other-team"], None),
                        account_user("dan", "/", &["gatehouse-ops"], None),
                        account_user("eve", "/staff/", &[], Some("research")),
                    ),
                )
            }
            ("ListSSHPublicKeys", "bob") => no_such_user(call),
            ("ListSSHPublicKeys", _) => {
                let ids: &[&str] = if user == "dan" {
                    &["APKAdan1", "APKAdan2"]
                } else {
                    &["APKA1"]
                };
                let keys: String = ids
                    .iter()
                    .map(|id| {
                        format!(
                            "<member><UserName>{user}</UserName><SSHPublicKeyId>{id}\
                             </SSHPublicKeyId><Status>Active</Status><UploadDate>{DATE}\
                             </UploadDate></member>"
                        )
                    })
                    .collect();
                ok(
                    "ListSSHPublicKeys",
                    &format!(
                        "<SSHPublicKeys>{keys}</SSHPublicKeys><IsTruncated>false</IsTruncated>"
                    ),
                )
            }
            ("GetSSHPublicKey", "dan") if call.param("SSHPublicKeyId") == "APKAdan2" => error(
                404,
                "NoSuchEntity",
                "The Public Key with id APKAdan2 cannot be found.",
            ),
            ("GetSSHPublicKey", _) => {
                let id = call.param("SSHPublicKeyId");
                let body = if user == "dan" { K2 } else { K1 };
                ok(
                    "GetSSHPublicKey",
                    &format!(
                        "<SSHPublicKey><UserName>{user}</UserName><SSHPublicKeyId>{id}\
                         </SSHPublicKeyId><Fingerprint>fp</Fingerprint><SSHPublicKeyBody>\
                         {body}</SSHPublicKeyBody><Status>Active</Status><UploadDate>{DATE}\
                         </UploadDate></SSHPublicKey>"
                    ),
                )
            }
            _ => error(400, "InvalidAction", "not faked"),
        }
    }

    /// One role of the account listing: (name, path, groups tag value).
    fn account_role(name: &str, path: &str, tag: Option<&str>) -> String {
        let tags = tag
            .map(|v| format!("<member><Key>gatehouse:groups</Key><Value>{v}</Value></member>"))
            .unwrap_or_default();
        format!(
            "<member><Path>{path}</Path><RoleName>{name}</RoleName><RoleId>AROA{name}</RoleId>\
             <Arn>arn:aws:iam::123456789012:role{path}{name}</Arn><CreateDate>{DATE}</CreateDate>\
             <Tags>{tags}</Tags></member>"
        )
    }

    /// IAM with roles: `deploy` (tagged), `plain` (untagged), `staff-ci` under /staff/
    /// (tagged), and no users. Users and roles are answered as the filters ask.
    fn iam_with_roles(call: &Call) -> Answer {
        assert_eq!(call.action, "GetAccountAuthorizationDetails");
        let filters: Vec<&str> = (1..=3)
            .map(|i| call.param(&format!("Filter.member.{i}")))
            .filter(|f| !f.is_empty())
            .collect();
        let roles = if filters.contains(&"Role") {
            [
                account_role("deploy", "/", Some("ops")),
                account_role("plain", "/", None),
                account_role("staff-ci", "/staff/", Some("ci")),
            ]
            .concat()
        } else {
            String::new()
        };
        ok(
            "GetAccountAuthorizationDetails",
            &format!(
                "<UserDetailList></UserDetailList><RoleDetailList>{roles}</RoleDetailList>\
                 <IsTruncated>false</IsTruncated>"
            ),
        )
    }

    #[tokio::test]
    async fn roles_with_the_groups_tag_come_with_the_sweep_and_alone_for_an_event() {
        let client = fake_iam(iam_with_roles).await;
        let calls = Calls::default();
        let listing = fetcher(client.clone(), None)
            .reading_roles()
            .fetch(&calls)
            .await
            .unwrap();
        let names: Vec<&str> = listing.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["deploy", "staff-ci"], "untagged roles are not kept");
        assert_eq!(
            listing.roles[0].arn,
            "arn:aws:iam::123456789012:role/deploy"
        );
        // The path prefix applies to roles as to users; an event re-reads only roles.
        let reader = fetcher(client.clone(), Some("/staff/"))
            .reading_roles()
            .user_reader();
        assert!(reader.reads_roles());
        let roles = reader.roles(&calls).await.unwrap();
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["staff-ci"]);
        assert_eq!(
            calls.snapshot().get("iam:GetAccountAuthorizationDetails"),
            Some(&2),
            "{calls}"
        );
        // Without roles, neither the sweep nor the reader asks for them.
        let mut off = fetcher(client, None);
        assert!(off.fetch(&calls).await.unwrap().roles.is_empty());
        assert!(off.user_reader().roles(&calls).await.unwrap().is_empty());
        assert_eq!(
            calls.snapshot().get("iam:GetAccountAuthorizationDetails"),
            Some(&3),
            "the sweep's one call, and none for the reader: {calls}"
        );
    }

    fn fetcher(client: Client, path_prefix: Option<&str>) -> IamFetcher {
        IamFetcher::new(
            client,
            path_prefix.map(str::to_owned),
            Some("gatehouse-".into()),
            "gatehouse:groups".into(),
            1000,
        )
    }

    #[tokio::test]
    async fn a_user_deleted_during_the_listing_is_gone_not_a_failed_refresh() {
        let client = fake_iam(iam_during_deletions).await;
        let mut fetcher = fetcher(client, None);
        let calls = Calls::default();
        let listing = fetcher
            .fetch(&calls)
            .await
            .expect("a deletion during the listing does not fail it");
        assert!(listing.roles.is_empty(), "roles are read only when asked");
        let users = listing.users;
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            ["alice", "dan", "eve"],
            "bob is gone; carol is no candidate"
        );
        assert_eq!(users[0].keys.len(), 1);
        assert_eq!(users[0].iam_groups, ["gatehouse-ops"]);
        assert_eq!(
            users[0].tags,
            [("gatehouse:groups".to_owned(), "research".to_owned())]
        );
        // dan keeps the key that still exists; the deleted one is not a key (nor a warning).
        assert_eq!(users[1].keys.len(), 1, "{:?}", users[1].keys);
        assert_eq!(users[1].keys[0].0, "APKAdan1");
        assert!(users[1].keys[0].1.is_ok());
        let counts = calls.snapshot();
        assert_eq!(
            counts.get("iam:GetAccountAuthorizationDetails"),
            Some(&1),
            "{calls}"
        );
        // Keys listed for the four who can be gatehouse users, not for carol.
        assert_eq!(counts.get("iam:ListSSHPublicKeys"), Some(&4), "{calls}");
        // The deleted key is not cached: asked again next time (and gone again).
        let again = fetcher.fetch(&calls).await.expect("second listing");
        assert_eq!(again.users.len(), 3);
        assert_eq!(
            calls.snapshot().get("iam:GetSSHPublicKey"),
            Some(&5),
            "{calls}"
        );
    }

    #[tokio::test]
    async fn the_path_prefix_applies_to_the_account_listing() {
        let client = fake_iam(iam_during_deletions).await;
        let users = fetcher(client, Some("/staff/"))
            .fetch(&Calls::default())
            .await
            .expect("listing")
            .users;
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["eve"]);
    }

    fn iam_denying_bob(call: &Call) -> Answer {
        match (call.action.as_str(), call.param("UserName")) {
            ("ListSSHPublicKeys", "bob") => error(403, "AccessDenied", "not authorized"),
            _ => iam_during_deletions(call),
        }
    }

    #[tokio::test]
    async fn any_other_error_for_one_user_still_fails_the_whole_listing() {
        let client = fake_iam(iam_denying_bob).await;
        match fetcher(client, None).fetch(&Calls::default()).await {
            Err(AwsError::Call {
                operation, code, ..
            }) => {
                assert_eq!(operation, "ListSSHPublicKeys");
                assert_eq!(code.as_deref(), Some("AccessDenied"));
            }
            other => panic!("{other:?}"),
        }
    }

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

//! IAM fetcher: users (with an optional path prefix), their Active SSH public keys, their
//! tags, and (optionally) their membership in prefixed IAM groups. Thin: it turns answers into
//! [`UserRecord`]s and leaves every decision to [`crate::build`].
//!
//! Calls per refresh, for N users under the path prefix of whom K have an Active key, G IAM
//! groups with the prefix and U keys not seen before: `ceil(N/1000)` ListUsers +
//! N ListSSHPublicKeys + K ListUserTags + (with `iam_group_prefix`: `ceil(groups/1000)`
//! ListGroups + G GetGroup) + U GetSSHPublicKey. Key bodies are fetched once per (user, key
//! id, upload date) and cached; a key that is re-uploaded gets a new id.
//!
//! IAM changes while it is listed. A user deleted after ListUsers named them answers
//! `NoSuchEntity` to their per-user calls (ListSSHPublicKeys, ListUserTags): that user is simply
//! gone from this listing, logged at info, and the rest of the listing stands. Likewise a key
//! deleted after it was listed (GetSSHPublicKey) is not one of the user's keys, and a group
//! deleted after ListGroups (GetGroup) has no members. Any other failed call fails the listing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_iam::types::{EncodingType, StatusType};
use aws_sdk_iam::Client;
use ssh_key::PublicKey;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::actions;
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
                        let Some(key) = self.get_key(&user.name, id, calls).await? else {
                            tracing::info!(user = %user.name, key = %id,
                                "IAM key deleted since it was listed (GetSSHPublicKey: \
                                 NoSuchEntity); not one of the user's keys in this listing");
                            continue;
                        };
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
            calls.count(actions::LIST_USERS);
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
            calls.count(actions::LIST_GROUPS);
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
                calls.count(actions::GET_GROUP);
                let answer = self
                    .client
                    .get_group()
                    .group_name(&group)
                    .set_marker(marker.clone())
                    .max_items(PAGE)
                    .send()
                    .await
                    .map_err(|e| AwsError::call("iam", "GetGroup", &e));
                let Some(page) = unless_gone(answer)? else {
                    tracing::info!(group = %group,
                        "IAM group deleted since ListGroups listed it (GetGroup: NoSuchEntity); \
                         no members in this listing");
                    done = true;
                    break;
                };
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
    /// body that is not an acceptable key is an `Ok(Some(Err(why)))`; a key (or user) deleted
    /// since it was listed is `Ok(None)`.
    async fn get_key(
        &self,
        user: &str,
        id: &str,
        calls: &Calls,
    ) -> Result<Option<Result<PublicKey, String>>, AwsError> {
        calls.count(actions::GET_SSH_PUBLIC_KEY);
        let answer = self
            .client
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
}

/// `None` for IAM's `NoSuchEntity` (the user, key or group was deleted after it was listed),
/// the answer otherwise; any other error stays an error.
fn unless_gone<T>(answer: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
    match answer {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_no_such_entity() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Logs that `user` was deleted after ListUsers listed them.
fn gone(user: &str, operation: &str) {
    tracing::info!(user = %user,
        "IAM user deleted since ListUsers listed it ({operation}: NoSuchEntity); \
         left out of this listing");
}

/// The per-user calls for `name`: `None` when the user has no Active key (then no tags are
/// read), or was deleted since ListUsers listed them.
async fn one_user(
    client: &Client,
    name: String,
    calls: &Calls,
) -> Result<Option<UserKeys>, AwsError> {
    let mut active = Vec::new();
    let mut marker: Option<String> = None;
    let mut done = false;
    for _ in 0..MAX_PAGES {
        calls.count(actions::LIST_SSH_PUBLIC_KEYS);
        let answer = client
            .list_ssh_public_keys()
            .user_name(&name)
            .set_marker(marker.clone())
            .max_items(PAGE)
            .send()
            .await
            .map_err(|e| AwsError::call("iam", "ListSSHPublicKeys", &e));
        let Some(page) = unless_gone(answer)? else {
            gone(&name, "ListSSHPublicKeys");
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
        calls.count(actions::LIST_USER_TAGS);
        let answer = client
            .list_user_tags()
            .user_name(&name)
            .set_marker(marker.clone())
            .max_items(PAGE)
            .send()
            .await
            .map_err(|e| AwsError::call("iam", "ListUserTags", &e));
        let Some(page) = unless_gone(answer)? else {
            gone(&name, "ListUserTags");
            return Ok(None);
        };
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

    fn users(names: &[&str]) -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "<member><Path>/</Path><UserName>{n}</UserName><UserId>AIDA{n}</UserId>\
                     <Arn>arn:aws:iam::123456789012:user/{n}</Arn><CreateDate>{DATE}</CreateDate>\
                     </member>"
                )
            })
            .collect()
    }

    fn group(name: &str) -> String {
        format!(
            "<Path>/</Path><GroupName>{name}</GroupName><GroupId>AGPA{name}</GroupId>\
             <Arn>arn:aws:iam::123456789012:group/{name}</Arn><CreateDate>{DATE}</CreateDate>"
        )
    }

    /// IAM during deletions: alice is whole; bob was deleted after ListUsers listed him
    /// (NoSuchEntity from ListSSHPublicKeys); carol after her keys were listed (from
    /// ListUserTags); dan lost one of his two keys after they were listed (from
    /// GetSSHPublicKey); the IAM group gatehouse-gone was deleted after ListGroups listed it
    /// (from GetGroup).
    fn iam_during_deletions(call: &Call) -> Answer {
        let user = call.param("UserName");
        match (call.action.as_str(), user) {
            ("ListUsers", _) => ok(
                "ListUsers",
                &format!(
                    "<Users>{}</Users><IsTruncated>false</IsTruncated>",
                    users(&["alice", "bob", "carol", "dan"])
                ),
            ),
            ("ListSSHPublicKeys", "bob") | ("ListUserTags", "carol") => no_such_user(call),
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
            ("ListUserTags", _) => ok(
                "ListUserTags",
                "<Tags><member><Key>gatehouse:groups</Key><Value>research</Value></member>\
                 </Tags><IsTruncated>false</IsTruncated>",
            ),
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
            ("ListGroups", _) => ok(
                "ListGroups",
                &format!(
                    "<Groups><member>{}</member><member>{}</member></Groups>\
                     <IsTruncated>false</IsTruncated>",
                    group("gatehouse-ops"),
                    group("gatehouse-gone")
                ),
            ),
            ("GetGroup", _) if call.param("GroupName") == "gatehouse-gone" => error(
                404,
                "NoSuchEntity",
                "The group with name gatehouse-gone cannot be found.",
            ),
            ("GetGroup", _) => ok(
                "GetGroup",
                &format!(
                    "<Group>{}</Group><Users>{}</Users><IsTruncated>false</IsTruncated>",
                    group("gatehouse-ops"),
                    users(&["alice", "dan"])
                ),
            ),
            _ => error(400, "InvalidAction", "not faked"),
        }
    }

    #[tokio::test]
    async fn a_user_deleted_during_the_listing_is_gone_not_a_failed_refresh() {
        let client = fake_iam(iam_during_deletions).await;
        let mut fetcher = IamFetcher::new(client, None, Some("gatehouse-".into()));
        let calls = Calls::default();
        let users = fetcher
            .fetch(&calls)
            .await
            .expect("a deletion during the listing does not fail it");
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "dan"], "bob and carol are gone");
        assert_eq!(users[0].keys.len(), 1);
        assert_eq!(users[0].iam_groups, ["gatehouse-ops"]);
        // dan keeps the key that still exists; the deleted one is not a key (nor a warning).
        assert_eq!(users[1].keys.len(), 1, "{:?}", users[1].keys);
        assert_eq!(users[1].keys[0].0, "APKAdan1");
        assert!(users[1].keys[0].1.is_ok());
        let counts = calls.snapshot();
        assert_eq!(counts.get("iam:GetGroup"), Some(&2), "{calls}");
        // The deleted key is not cached: asked again next time (and gone again).
        let again = fetcher.fetch(&calls).await.expect("second listing");
        assert_eq!(again.len(), 2);
        assert_eq!(
            calls.snapshot().get("iam:GetSSHPublicKey"),
            Some(&4),
            "{calls}"
        );
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
        let mut fetcher = IamFetcher::new(client, None, None);
        match fetcher.fetch(&Calls::default()).await {
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

//! IAM user names as SSH login names, and back; the session names of SSO and role callers
//! (`gatehouse login`) become login names by the same rule.
//!
//! IAM user names are 1 to 64 characters of `A-Z a-z 0-9` and `+ = , . @ _ -`, and so are STS
//! session names (2 to 64: IAM Identity Center puts the user's name there). Four of those do
//! not belong in an SSH login name: `,` separates jump hosts in `ssh -J a,b`, `@` separates the
//! user from the host in `user@host`, and `+` and `=` have meanings in some tools' option
//! syntax. The mapping is URL percent-encoding with `~` instead of `%` (a character IAM never
//! allows), applied to exactly those four:
//!
//! | IAM | login |
//! |-----|-------|
//! | `+` | `~2B` |
//! | `=` | `~3D` |
//! | `,` | `~2C` |
//! | `@` | `~40` |
//!
//! Everything else is kept as is, case included: `alice` stays `alice`,
//! `jane.doe@example.org` logs in as `jane.doe~40example.org`. Decoding accepts only that
//! exact form, so the mapping is a bijection between valid IAM names and the login names it
//! produces: two IAM users can never share a login name.

/// The characters that are escaped, with their escapes.
const ESCAPES: [(char, &str); 4] = [('+', "~2B"), ('=', "~3D"), (',', "~2C"), ('@', "~40")];

/// Longest IAM user name.
const MAX_IAM_NAME: usize = 64;

/// Why an IAM user name cannot become a login name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty or longer than IAM allows.
    #[error("IAM user name has {0} characters, IAM allows 1 to 64")]
    Length(usize),
    /// A character IAM does not allow in user names.
    #[error("IAM user name contains {0:?}, which IAM does not allow in user names")]
    Character(char),
}

/// The SSH login name of the IAM user `iam_name`.
///
/// # Errors
/// The name is not a valid IAM user name (IAM would not return one, but its answer is input).
pub fn login_name(iam_name: &str) -> Result<String, NameError> {
    let len = iam_name.chars().count();
    if len == 0 || len > MAX_IAM_NAME {
        return Err(NameError::Length(len));
    }
    let mut out = String::with_capacity(iam_name.len());
    for c in iam_name.chars() {
        if let Some((_, escape)) = ESCAPES.iter().find(|(e, _)| *e == c) {
            out.push_str(escape);
        } else if c.is_ascii_alphanumeric() || "._-".contains(c) {
            out.push(c);
        } else {
            return Err(NameError::Character(c));
        }
    }
    Ok(out)
}

/// The IAM user name a login name stands for, or `None` if no IAM user maps to it.
pub fn iam_name(login: &str) -> Option<String> {
    let mut out = String::with_capacity(login.len());
    let mut rest = login;
    while let Some(c) = rest.chars().next() {
        if c == '~' {
            let (plain, escape) = ESCAPES
                .iter()
                .find(|(_, escape)| rest.starts_with(escape))?;
            out.push(*plain);
            rest = &rest[escape.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    // Only names that encode back to exactly this login are valid (no stray characters).
    (login_name(&out).ok()? == login).then_some(out)
}

/// The login of a caller who assumed the IAM role `role` with the session name `session`
/// (`gatehouse login`): `<role>/<session>`, each part by [`login_name`]. Whoever may assume
/// a role chooses its session name, so a role caller's login names the role: it can never be
/// the login of an IAM Identity Center user (whose session name IAM Identity Center sets), of
/// an IAM user or of a static user (none of which contains `/`), nor of another role's caller.
///
/// # Errors
/// Either name is not a valid IAM name.
pub fn role_login(role: &str, session: &str) -> Result<String, NameError> {
    Ok(format!("{}/{}", login_name(role)?, login_name(session)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_unchanged() {
        for name in ["alice", "Bob", "jane.doe", "svc_build-01", "a"] {
            assert_eq!(login_name(name).unwrap(), name);
            assert_eq!(iam_name(name).unwrap(), name);
        }
    }

    #[test]
    fn the_four_characters_are_escaped_and_round_trip() {
        let cases = [
            ("jane.doe@example.org", "jane.doe~40example.org"),
            ("a+b", "a~2Bb"),
            ("x=y,z", "x~3Dy~2Cz"),
            ("@+=,", "~40~2B~3D~2C"),
        ];
        for (iam, login) in cases {
            assert_eq!(login_name(iam).unwrap(), login);
            assert_eq!(iam_name(login).unwrap(), iam);
        }
    }

    #[test]
    fn decoding_accepts_only_the_canonical_form() {
        for login in [
            "a~2bb", // lower-case hex
            "a~41",  // an escape of a character that is never escaped
            "a~",    // dangling
            "a@b",   // a raw character that must have been escaped
            "a b",   // not an IAM character at all
            "",      // empty
            "~7E",   // `~` itself can never be in an IAM name
        ] {
            assert_eq!(iam_name(login), None, "{login:?}");
        }
    }

    #[test]
    fn a_role_login_names_its_role_and_is_no_other_login() {
        assert_eq!(role_login("ci", "run-42").unwrap(), "ci/run-42");
        assert_eq!(
            role_login("deploy", "alice@example.org").unwrap(),
            "deploy/alice~40example.org"
        );
        // Never the login of an SSO user or IAM user of the same session name.
        assert_eq!(iam_name("deploy/alice~40example.org"), None);
        assert!(role_login("a b", "x").is_err());
        assert!(role_login("ci", "").is_err());
    }

    #[test]
    fn invalid_iam_names_are_refused() {
        assert_eq!(login_name(""), Err(NameError::Length(0)));
        assert_eq!(login_name(&"a".repeat(65)), Err(NameError::Length(65)));
        assert_eq!(login_name("a b"), Err(NameError::Character(' ')));
        assert_eq!(login_name("a~b"), Err(NameError::Character('~')));
        assert_eq!(login_name("é"), Err(NameError::Character('é')));
    }

    #[test]
    fn the_mapping_is_injective_on_a_sample() {
        let alphabet = ['a', 'Z', '0', '+', '=', ',', '.', '@', '_', '-'];
        let mut seen = std::collections::HashMap::new();
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let iam: String = [a, b, c].iter().collect();
                    let login = login_name(&iam).unwrap();
                    assert_eq!(iam_name(&login).as_deref(), Some(iam.as_str()));
                    if let Some(other) = seen.insert(login.clone(), iam.clone()) {
                        panic!("{iam} and {other} both map to {login}");
                    }
                }
            }
        }
    }
}

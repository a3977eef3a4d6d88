//! SHA-256 digests in lower-case hex: of the user data (the tag that tells a bastion's launch
//! apart) and of the stored binary (its object name). A leaf, like [`crate::names`].

/// SHA-256 (hex) of a text.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

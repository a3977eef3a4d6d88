//! SSH key pairs made with `ssh-keygen`, for clients and for throwaway host keys.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::run_with_timeout;
use super::scratch::Scratch;

/// The key algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    /// RSA, 3072 bits.
    Rsa,
    /// ECDSA on P-256.
    Ecdsa,
}

/// A key pair on disk: `<scratch>/keys/<name>` (mode 0600) and `<name>.pub`.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub kind: KeyType,
    /// The private key file, for `IdentityFile` / `HostKey`.
    pub private: PathBuf,
    /// The public key file.
    pub public: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA... <name>`, for `authorized_keys`.
    pub public_line: String,
}

impl KeyPair {
    /// Generates a new key pair with no passphrase; `name` is the file name and the comment.
    pub fn generate(scratch: &Scratch, name: &str, kind: KeyType) -> KeyPair {
        let dir = scratch.subdir("keys");
        let private = dir.join(name);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-N", "", "-C", name, "-f"]).arg(&private);
        match kind {
            KeyType::Ed25519 => cmd.args(["-t", "ed25519"]),
            KeyType::Rsa => cmd.args(["-t", "rsa", "-b", "3072"]),
            KeyType::Ecdsa => cmd.args(["-t", "ecdsa", "-b", "256"]),
        };
        run_with_timeout(cmd, Duration::from_secs(30))
            .expect_success("ssh-keygen (is openssh-client installed?)");
        let mut public = private.clone().into_os_string();
        public.push(".pub");
        let public = PathBuf::from(public);
        let public_line = fs::read_to_string(&public)
            .unwrap_or_else(|e| panic!("read {}: {e}", public.display()))
            .trim()
            .to_string();
        KeyPair {
            kind,
            private,
            public,
            public_line,
        }
    }

    /// An ed25519 key pair.
    pub fn ed25519(scratch: &Scratch, name: &str) -> KeyPair {
        KeyPair::generate(scratch, name, KeyType::Ed25519)
    }

    /// The SHA256 fingerprint as OpenSSH prints it (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-l", "-E", "sha256", "-f"]).arg(&self.public);
        let out = run_with_timeout(cmd, Duration::from_secs(10));
        out.expect_success("ssh-keygen -l");
        out.stdout_str()
            .split_whitespace()
            .nth(1)
            .expect("ssh-keygen -l prints `bits fingerprint comment (type)`")
            .to_string()
    }
}

//! Join tokens, Swarm-style: `FLTKN-1-<CA digest>-<secret>`.
//!
//! The digest is the SHA-256 (hex) of the cluster CA's certificate: the
//! joiner refuses a manager whose TLS chain does not carry that CA before it
//! sends anything. The secret (32 lowercase base-36 characters, ~165 bits)
//! proves to the manager that the joiner was given the token; the manager
//! keeps only the SHA-256 of each role's secret, so rotating replaces it.
//! This module must never log a token or a secret.

use rand::Rng as _;
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "FLTKN";
const VERSION: &str = "1";
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Why a token string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a Flotilla join token (expected FLTKN-1-<64 hex digits>-<32 characters>)")]
    Malformed,
    #[error("join token version {0} is not supported (this binary reads version 1)")]
    Version(String),
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A token with a fresh random secret.
    pub fn generate(ca_digest: &str) -> JoinToken {
        JoinToken {
            ca_digest: ca_digest.to_string(),
            secret: new_secret(),
        }
    }

    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        let [prefix, version, digest, secret] = parts.as_slice() else {
            return Err(TokenError::Malformed);
        };
        if *prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        if *version != VERSION {
            return Err(TokenError::Version(version.to_string()));
        }
        let digest_ok = digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| ALPHABET.contains(&b));
        if !digest_ok || !secret_ok {
            return Err(TokenError::Malformed);
        }
        Ok(JoinToken {
            ca_digest: digest.to_string(),
            secret: secret.to_string(),
        })
    }

    /// What the manager stores instead of the secret.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two hex hashes without an early exit.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn new_secret() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_differ() {
        let d = "ab".repeat(32);
        let t = JoinToken::generate(&d);
        let s = t.to_string();
        assert!(s.starts_with("FLTKN-1-"));
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert_ne!(JoinToken::generate(&d).secret, t.secret);
        assert!(hashes_equal(&t.secret_hash(), &hash_secret(&t.secret)));
        assert!(!hashes_equal(
            &t.secret_hash(),
            &JoinToken::generate(&d).secret_hash()
        ));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let d = "ab".repeat(32);
        let good = JoinToken::generate(&d).to_string();
        assert_eq!(JoinToken::parse("SWMTKN-1-x-y"), Err(TokenError::Malformed));
        assert_eq!(
            JoinToken::parse(&good.replacen("-1-", "-2-", 1)),
            Err(TokenError::Version("2".into()))
        );
        assert_eq!(
            JoinToken::parse(&good[..good.len() - 1]),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            JoinToken::parse(&good.replace(&d, &"zz".repeat(32))),
            Err(TokenError::Malformed)
        );
    }
}

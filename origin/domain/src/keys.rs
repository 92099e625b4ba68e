//! API keys and their roles: what each role may do, how keys are made and hashed.
//!
//! Keys are random 160-bit secrets shown once; only their SHA-256 is stored (a fast hash is
//! enough for high-entropy secrets, and it keeps authentication cheap on hot paths).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read configuration and results; run the calculators.
    Viewer,
    /// Read snapshots, evaluate, send events. Safe to embed in a web page: public, so its
    /// rate limit applies per client address, and one client cannot spend everyone's.
    Sdk,
    /// What an sdk key may do, for edges and backend servers that many users sit behind:
    /// never given to browsers, limited per key rather than per address.
    Server,
}

/// What a request wants to do; each route asks for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    ReadSnapshot,
    SendEvents,
    ReadConfig,
    WriteConfig,
}

impl Permission {
    pub fn describe(self) -> &'static str {
        match self {
            Permission::ReadSnapshot => "read snapshots",
            Permission::SendEvents => "send events",
            Permission::ReadConfig => "read configuration or results",
            Permission::WriteConfig => "change configuration",
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Sdk => "sdk",
            Role::Server => "server",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            "sdk" => Some(Role::Sdk),
            "server" => Some(Role::Server),
            _ => None,
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Role::Admin, _)
                | (
                    Role::Viewer,
                    Permission::ReadSnapshot | Permission::ReadConfig
                )
                | (
                    Role::Sdk | Role::Server,
                    Permission::ReadSnapshot | Permission::SendEvents
                )
        )
    }
}

/// A freshly generated key: the secret (shown once) and what is stored.
pub struct NewKey {
    pub secret: String,
    pub hash: String,
    pub prefix: String,
}

pub fn generate_key(role: Role) -> NewKey {
    let mut random = [0u8; 20];
    getrandom::fill(&mut random).expect("the operating system's random number generator");
    let secret = format!("abx_{}_{}", role.as_str(), hex(&random));
    NewKey {
        hash: hash_key(&secret),
        prefix: secret[..secret.len().min(16)].to_string(),
        secret,
    }
}

/// The shortest key an operator may choose: 32 characters of printable ASCII carry at least
/// the entropy of a generated key when they are random, and a shorter one would be guessable.
pub const MIN_OPERATOR_KEY_LEN: usize = 32;

/// How much of an operator's key is kept in clear as its prefix, to recognise it in the key
/// list: a quarter of the shortest key, so the rest stays secret.
const OPERATOR_KEY_PREFIX_LEN: usize = 8;

/// Registers a key chosen by the operator (e.g. `ABX_BOOTSTRAP_ADMIN_KEY`): at least
/// `MIN_OPERATOR_KEY_LEN` characters of printable ASCII, without spaces.
pub fn key_from_secret(secret: &str) -> Result<NewKey, Error> {
    if secret.len() < MIN_OPERATOR_KEY_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::bad_request(format!(
            "a key must be at least {MIN_OPERATOR_KEY_LEN} characters of printable ASCII without spaces"
        )));
    }
    Ok(NewKey {
        secret: secret.to_string(),
        hash: hash_key(secret),
        prefix: secret[..OPERATOR_KEY_PREFIX_LEN].to_string(),
    })
}

pub fn hash_key(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lower-case hex. Every authenticated request hashes its key and looks the hash up by its
/// hex text, so this avoids a formatting call and an allocation per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    text
}

#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub id: String,
    pub role: Role,
}

/// An API key as listed: never its secret or hash.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_keys_are_long_printable_ascii_and_keep_most_of_it_secret() {
        for weak in [
            "abx_admin_short_key_16",
            &"é".repeat(20),
            &format!("{} x", "k".repeat(40)),
        ] {
            assert!(key_from_secret(weak).is_err(), "{weak:?} was accepted");
        }
        let secret = "abx_admin_operator_key_0123456789";
        let key = key_from_secret(secret).expect("a strong key");
        assert_eq!(key.prefix, "abx_admi");
        assert_eq!(key.hash, hash_key(secret));
    }

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        assert_eq!(hex(&[]), "");
    }
}

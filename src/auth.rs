//! Proving who calls. API keys (`pvk_<id>_<secret>`, presented as
//! `authorization: Bearer <key>`) are checked against the access list
//! (`--auth FILE`, reloaded when it changes), which holds each key's id
//! and the SHA-256 of its secret, never the secret. What a proven identity
//! may do is decided by [`crate::domain::access`].
//!
//! A key's secret is 256 random bits from the operating system's CSPRNG,
//! so one SHA-256 is enough (a slow password hash protects guessable
//! secrets; these are not guessable), and a check costs a microsecond.

use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::Clock;
use crate::domain::access::{valid_key_id, AccessList, Grant, TokenBucket};
use crate::limits;
use crate::metrics::Counter;
use crate::reload::{Document, FileError, InForce};
pub use crate::secret::Secret;

/// What every payvisor API key starts with (secret scanners match on it).
pub const KEY_PREFIX: &str = "pvk_";

impl Document for AccessList {
    const KIND: &'static str = "access list";
    const BYTES_MAX: usize = limits::AUTH_FILE_BYTES_MAX;

    fn parse(text: &str) -> Result<AccessList, Vec<String>> {
        AccessList::parse(text).map_err(|error| error.problems)
    }

    fn summary(&self) -> String {
        format!(
            "{} keys, {} certificates",
            self.keys.len(),
            self.certificates.len()
        )
    }
}

/// A freshly drawn key: shown once, then only its hash is kept.
#[derive(Debug)]
pub struct NewKey {
    pub id: String,
    pub key: Secret,
    /// The SHA-256 of the secret, in hex: what the access list holds.
    pub secret_sha256: String,
}

/// Draws a new key with `id` (or a random one) from the OS's CSPRNG.
pub fn new_key(id: Option<&str>) -> Result<NewKey, String> {
    use ring::rand::SecureRandom;
    let random = ring::rand::SystemRandom::new();
    let draw = |bytes: &mut [u8]| {
        random
            .fill(bytes)
            .map_err(|_| "the operating system's random source failed".to_owned())
    };
    let id = match id {
        Some(id) if valid_key_id(id) => id.to_owned(),
        Some(id) => {
            return Err(format!(
                "key id {id:?}: 1..={} characters of a-z, 0-9 and '-'",
                limits::AUTH_KEY_ID_CHARS_MAX
            ))
        }
        None => {
            let mut bytes = [0; 6];
            draw(&mut bytes)?;
            format!("k-{}", hex(&bytes))
        }
    };
    let mut secret = [0; 32];
    draw(&mut secret)?;
    let secret = hex(&secret);
    Ok(NewKey {
        key: Secret::new(format!("{KEY_PREFIX}{id}_{secret}")),
        secret_sha256: hex(&sha256(secret.as_bytes())),
        id,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hash = [0; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Equal in time independent of where the bytes differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The id and secret of a presented key.
fn split_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(KEY_PREFIX)?.split_once('_')
}

/// Why a caller is not authenticated. Every variant is answered
/// `UNAUTHENTICATED`; the text says what to fix, never whether a key id
/// exists, and never echoes what was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `authorization: Bearer <API key>`")]
    Missing,
    #[error("the authorization header is not `Bearer <API key>`")]
    Malformed,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key or certificate has expired in the access list")]
    Expired,
    #[error("the client certificate is not in the access list")]
    UnknownCertificate,
}

/// Per-identity token buckets (`Grant::rate`), on the process's monotonic
/// clock: a key that calls faster than its rate is answered
/// `RESOURCE_EXHAUSTED` with when to retry.
pub struct RateLimiter {
    started: std::time::Instant,
    buckets: std::sync::Mutex<std::collections::HashMap<String, TokenBucket>>,
    /// Calls refused since start (`payvisor_rate_limited_total`).
    pub refused: Counter,
}

impl Default for RateLimiter {
    fn default() -> RateLimiter {
        RateLimiter {
            started: std::time::Instant::now(),
            buckets: Default::default(),
            refused: Counter::default(),
        }
    }
}

impl RateLimiter {
    /// Takes a call from `grant`'s bucket, or says how long to wait.
    pub fn take(&self, grant: &Grant) -> Result<(), std::time::Duration> {
        let Some(rate) = grant.rate else {
            return Ok(());
        };
        let now_ms = self.started.elapsed().as_millis() as u64;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if buckets.len() > limits::AUTH_IDENTITIES_MAX && !buckets.contains_key(&grant.identity) {
            // Identities come from the list, so this takes removed ones
            // piling up; starting over only refills buckets.
            buckets.clear();
        }
        let taken = buckets
            .entry(grant.identity.clone())
            .or_insert_with(|| TokenBucket::full(rate, now_ms))
            .take(rate, now_ms);
        taken.map_err(|wait_ms| {
            self.refused.inc();
            std::time::Duration::from_millis(wait_ms)
        })
    }
}

/// What the access list says of one identity: its grant and, for a key,
/// the hash of its secret (so a secret replaced under the same id is a
/// change too).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    secret_sha256: Option<[u8; 32]>,
    pub grant: Grant,
}

/// Checks credentials against the access list in force. Without an
/// access list (a development server on loopback) there is nothing to
/// check: see [`Authenticator::required`].
pub struct Authenticator {
    access: Option<Arc<InForce<AccessList>>>,
    clock: Arc<dyn Clock>,
    /// Failed attempts since start (`payvisor_auth_failures_total`).
    pub failures: Counter,
    pub rates: RateLimiter,
}

impl Authenticator {
    /// Every call proves who it is, against `access`.
    pub fn new(access: Arc<InForce<AccessList>>, clock: Arc<dyn Clock>) -> Authenticator {
        Authenticator {
            access: Some(access),
            clock,
            failures: Counter::default(),
            rates: RateLimiter::default(),
        }
    }

    /// No authentication: only for a server that listens on loopback, or
    /// with `--insecure-no-auth`.
    pub fn disabled(clock: Arc<dyn Clock>) -> Authenticator {
        Authenticator {
            access: None,
            clock,
            failures: Counter::default(),
            rates: RateLimiter::default(),
        }
    }

    /// Loads the access list at `path` (a bad file stops the start).
    pub fn from_file(path: PathBuf, clock: Arc<dyn Clock>) -> Result<Authenticator, FileError> {
        Ok(Authenticator::new(
            Arc::new(InForce::from_file(path)?),
            clock,
        ))
    }

    /// Whether callers must authenticate.
    pub fn required(&self) -> bool {
        self.access.is_some()
    }

    /// The access list, to reload it.
    pub fn access(&self) -> Option<&Arc<InForce<AccessList>>> {
        self.access.as_ref()
    }

    /// The grant of the API key in an `authorization` header value.
    pub fn bearer(&self, header: Option<&[u8]>) -> Result<Grant, AuthError> {
        let verified = self.verify_bearer(header);
        if verified.is_err() {
            self.failures.inc();
        }
        verified
    }

    fn verify_bearer(&self, header: Option<&[u8]>) -> Result<Grant, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        if header.len() > limits::AUTH_HEADER_BYTES_MAX {
            return Err(AuthError::Malformed);
        }
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let (scheme, key) = header.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let (id, secret) = split_key(key.trim()).ok_or(AuthError::Invalid)?;
        let access = self.access.as_ref().ok_or(AuthError::Invalid)?.current();
        let presented = sha256(secret.as_bytes());
        let Some((expected, grant)) = access.keys.get(id) else {
            // As long as a known id's check: no timing tells which exist.
            same_hash(&presented, &[0; 32]);
            return Err(AuthError::Invalid);
        };
        if !same_hash(&presented, expected) {
            return Err(AuthError::Invalid);
        }
        if grant.expired(self.clock.now()) {
            return Err(AuthError::Expired);
        }
        Ok(grant.clone())
    }

    /// The grant of a verified client certificate, by its subject.
    pub fn certificate(&self, subject: &str) -> Result<Grant, AuthError> {
        let verified = self.verify_certificate(subject);
        if verified.is_err() {
            self.failures.inc();
        }
        verified
    }

    fn verify_certificate(&self, subject: &str) -> Result<Grant, AuthError> {
        let access = self.access.as_ref().ok_or(AuthError::Invalid)?.current();
        let grant = access
            .certificates
            .get(subject)
            .ok_or(AuthError::UnknownCertificate)?;
        if grant.expired(self.clock.now()) {
            return Err(AuthError::Expired);
        }
        Ok(grant.clone())
    }

    /// The grant of an identity (key id or certificate subject) that a
    /// node presents as the caller of a forwarded call: the caller proved
    /// it to that node, and this node applies its own access list to it.
    pub fn on_behalf_of(&self, identity: &str) -> Result<Grant, AuthError> {
        let verified = self.verify_on_behalf_of(identity);
        if verified.is_err() {
            self.failures.inc();
        }
        verified
    }

    fn verify_on_behalf_of(&self, identity: &str) -> Result<Grant, AuthError> {
        let entry = self.entry_of(identity).ok_or(AuthError::Invalid)?;
        if entry.grant.expired(self.clock.now()) {
            return Err(AuthError::Expired);
        }
        Ok(entry.grant)
    }

    /// The access list's entry for `identity` (a key id, else a
    /// certificate subject) as it stands now.
    pub fn entry_of(&self, identity: &str) -> Option<Entry> {
        let access = self.access.as_ref()?.current();
        match access.keys.get(identity) {
            Some((secret_sha256, grant)) => Some(Entry {
                secret_sha256: Some(*secret_sha256),
                grant: grant.clone(),
            }),
            None => access.certificates.get(identity).map(|grant| Entry {
                secret_sha256: None,
                grant: grant.clone(),
            }),
        }
    }

    /// Whether `entry`, taken when a stream opened, still stands: the
    /// identity is in the list with the same secret, roles and scope, and
    /// unexpired (a changed expiry or rate leaves its streams open).
    pub fn still_stands(&self, entry: &Entry) -> bool {
        self.entry_of(&entry.grant.identity).is_some_and(|now| {
            now.secret_sha256 == entry.secret_sha256
                && now.grant.roles == entry.grant.roles
                && now.grant.scope == entry.grant.scope
                && !now.grant.expired(self.clock.now())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::access::Role;
    use crate::domain::time::parse_rfc3339;

    fn authenticator(list: &str, now: &str) -> Authenticator {
        let list = AccessList::parse(list).unwrap();
        let clock = ManualClock::starting_at(parse_rfc3339(now).unwrap());
        Authenticator::new(Arc::new(InForce::fixed(list)), Arc::new(clock))
    }

    #[test]
    fn a_new_key_verifies_and_nothing_else_does() {
        let fresh = new_key(Some("gw-1")).unwrap();
        assert!(fresh.key.expose().starts_with("pvk_gw-1_"));
        assert_eq!(format!("{:?}", fresh.key), "[redacted]");
        let other = new_key(None).unwrap();
        assert!(other.id.starts_with("k-") && valid_key_id(&other.id));
        let list = format!(
            r#"{{"keys": [{{"id": "gw-1", "secret_sha256": "{}", "roles": ["gateway"], "expires": "2027-01-01T00:00:00Z"}}]}}"#,
            fresh.secret_sha256
        );
        let auth = authenticator(&list, "2026-12-01T00:00:00Z");
        let bearer = format!("Bearer {}", fresh.key.expose());
        let grant = auth.bearer(Some(bearer.as_bytes())).unwrap();
        assert_eq!(grant.identity, "gw-1");
        assert!(grant.roles.contains(&Role::Gateway));
        let lower = format!("bearer {}", fresh.key.expose());
        assert!(auth.bearer(Some(lower.as_bytes())).is_ok());

        let wrong_secret = format!("Bearer pvk_gw-1_{}", "0".repeat(64));
        let unknown_id = format!("Bearer {}", other.key.expose());
        for (header, error) in [
            (None, AuthError::Missing),
            (Some(fresh.key.expose().to_owned()), AuthError::Malformed),
            (
                Some(format!("Basic {}", fresh.key.expose())),
                AuthError::Malformed,
            ),
            (Some(wrong_secret), AuthError::Invalid),
            (Some(unknown_id), AuthError::Invalid),
            (Some("Bearer nonsense".to_owned()), AuthError::Invalid),
            (
                Some(format!("Bearer {}", "x".repeat(600))),
                AuthError::Malformed,
            ),
        ] {
            assert_eq!(
                auth.bearer(header.as_deref().map(str::as_bytes)),
                Err(error)
            );
        }
        assert_eq!(auth.failures.get(), 7);

        let late = authenticator(&list, "2027-01-01T00:00:00Z");
        assert_eq!(
            late.bearer(Some(bearer.as_bytes())),
            Err(AuthError::Expired)
        );
        assert_eq!(late.on_behalf_of("gw-1"), Err(AuthError::Expired));
        assert_eq!(auth.on_behalf_of("gw-1").unwrap().identity, "gw-1");
        assert_eq!(auth.on_behalf_of("nobody"), Err(AuthError::Invalid));
    }

    #[test]
    fn an_entry_stands_while_its_secret_grant_and_time_do() {
        let entry = |secret: char, roles: &str, expires: &str| {
            format!(
                r#"{{"keys": [{{"id": "gw-1", "secret_sha256": "{}", "roles": [{roles}], "expires": "{expires}"}}],
                    "certificates": [{{"subject": "CN=ops", "roles": ["oncall"]}}]}}"#,
                secret.to_string().repeat(64)
            )
        };
        let now = "2026-12-01T00:00:00Z";
        let opened = authenticator(&entry('a', r#""gateway""#, "2027-01-01T00:00:00Z"), now);
        let key = opened.entry_of("gw-1").unwrap();
        let certificate = opened.entry_of("CN=ops").unwrap();
        assert_eq!(opened.entry_of("nobody"), None);
        assert!(opened.still_stands(&key) && opened.still_stands(&certificate));
        for (changed, at) in [
            // Its secret replaced under the same id.
            (entry('b', r#""gateway""#, "2027-01-01T00:00:00Z"), now),
            // A role more or less.
            (
                entry('a', r#""gateway","support""#, "2027-01-01T00:00:00Z"),
                now,
            ),
            // Expired since.
            (
                entry('a', r#""gateway""#, "2027-01-01T00:00:00Z"),
                "2027-01-01T00:00:00Z",
            ),
            // Removed.
            (r#"{"keys": []}"#.to_owned(), now),
        ] {
            assert!(
                !authenticator(&changed, at).still_stands(&key),
                "{changed} at {at}"
            );
        }
        // A later expiry is no reason to end its streams.
        let extended = authenticator(&entry('a', r#""gateway""#, "2028-01-01T00:00:00Z"), now);
        assert!(extended.still_stands(&key));
        // The certificate's entry is untouched by the key's changes.
        let later = authenticator(&entry('b', r#""gateway""#, "2027-01-01T00:00:00Z"), now);
        assert!(later.still_stands(&certificate));
    }

    #[test]
    fn bad_key_ids_are_refused_when_drawing() {
        assert!(new_key(Some("Has_Underscore")).is_err());
        assert!(new_key(Some("")).is_err());
    }
}

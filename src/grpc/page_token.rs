//! Sealed page tokens for the listings that cross accounts (the review
//! queue, the stalled list). Their position in the store's index names the
//! account and payment of the last item read, which may be another
//! tenant's: a key scoped to some accounts must not learn it from a token.
//! So the position travels encrypted and authenticated
//! (ChaCha20-Poly1305, with the listing's kind as associated data), under
//! a key every node of the store shares ([`PageTokenKey`]): a token from
//! one node opens on any other, and a token forged, altered or taken from
//! the other listing is refused as the client's error.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::actors::CommandError;
use crate::store::schema::{IndexPosition, PageTokenKey};

/// Bytes sealed in every token: a position's length and the longest
/// position, padded.
const PLAINTEXT_BYTES: usize = 2 + crate::limits::INDEX_TOKEN_BYTES_MAX;

/// Which listing a token continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    ReviewQueue,
    Stalled,
}

impl Listing {
    /// The token's prefix (format 2: sealed; format 1 was the plain
    /// position, no longer accepted).
    fn prefix(self) -> &'static str {
        match self {
            Listing::ReviewQueue => "r2.",
            Listing::Stalled => "s2.",
        }
    }

    /// What the client is told when a token does not open.
    fn refusal(self) -> &'static str {
        match self {
            Listing::ReviewQueue => "not a token returned by ListPayments for accounts/-",
            Listing::Stalled => "not a token returned by ListStalledPayments",
        }
    }
}

/// Seals and opens page tokens.
pub struct PageTokens {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(…)")
    }
}

/// A fresh random key, for the store to keep if it has none yet.
pub fn fresh_key() -> PageTokenKey {
    let mut key = [0; 32];
    SystemRandom::new()
        .fill(&mut key)
        .expect("the operating system's random source");
    PageTokenKey(key)
}

impl PageTokens {
    pub fn new(key: &PageTokenKey) -> PageTokens {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key.0).expect("a 32-byte key");
        PageTokens {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        }
    }

    /// The token that continues `listing` after `position`.
    pub fn seal(&self, listing: Listing, position: &IndexPosition) -> String {
        let mut nonce = [0; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the operating system's random source");
        // Padded to one length, so that a token's length does not tell
        // the length of the ids it hides: two bytes of length, the
        // position, zeros.
        let position = position.as_str().as_bytes();
        let mut sealed = Vec::with_capacity(PLAINTEXT_BYTES + 16);
        sealed.extend_from_slice(&(position.len() as u16).to_be_bytes());
        sealed.extend_from_slice(position);
        sealed.resize(PLAINTEXT_BYTES, 0);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(listing.prefix()),
                &mut sealed,
            )
            .expect("a position far below ChaCha20-Poly1305's limit");
        debug_assert!(position.len() <= crate::limits::INDEX_TOKEN_BYTES_MAX);
        let mut token = String::with_capacity(3 + 2 * (NONCE_LEN + sealed.len()));
        token.push_str(listing.prefix());
        for byte in nonce.iter().chain(&sealed) {
            token.push_str(&format!("{byte:02x}"));
        }
        token
    }

    /// The position a token of `listing` continues after; `None` for the
    /// empty token (the first page).
    pub fn open(
        &self,
        listing: Listing,
        token: &str,
    ) -> Result<Option<IndexPosition>, CommandError> {
        if token.is_empty() {
            return Ok(None);
        }
        self.try_open(listing, token)
            .map(Some)
            .ok_or_else(|| CommandError::invalid("page_token", listing.refusal()))
    }

    fn try_open(&self, listing: Listing, token: &str) -> Option<IndexPosition> {
        let hex = token.strip_prefix(listing.prefix())?;
        // Every token is a padded position, sealed, in hex.
        if hex.len() != 2 * (NONCE_LEN + PLAINTEXT_BYTES + 16) {
            return None;
        }
        let mut bytes = hex
            .as_bytes()
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).ok()?;
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(listing.prefix()), &mut sealed)
            .ok()?;
        let (length, rest) = opened.split_first_chunk::<2>()?;
        let position = rest.get(..usize::from(u16::from_be_bytes(*length)))?;
        IndexPosition::parse(std::str::from_utf8(position).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> IndexPosition {
        IndexPosition::parse("1:7:0001700000000000/acct-other/pay-secret").unwrap()
    }

    #[test]
    fn a_sealed_token_hides_the_position_and_opens_only_as_issued() {
        let key = fresh_key();
        let tokens = PageTokens::new(&key);
        let token = tokens.seal(Listing::ReviewQueue, &position());
        assert!(token.starts_with("r2."), "{token}");
        assert!(!token.contains("acct-other") && !token.contains("pay-secret"));
        // Random nonces: the same position never gives the same token.
        assert_ne!(token, tokens.seal(Listing::ReviewQueue, &position()));
        // One length for every token, whatever the position's.
        let short = IndexPosition::parse("0:0:1/a/b").unwrap();
        let sealed_short = tokens.seal(Listing::ReviewQueue, &short);
        assert_eq!(sealed_short.len(), token.len());
        assert_eq!(
            tokens.open(Listing::ReviewQueue, &sealed_short).unwrap(),
            Some(short)
        );
        // Any node with the store's key opens it.
        let elsewhere = PageTokens::new(&key.clone());
        assert_eq!(
            elsewhere.open(Listing::ReviewQueue, &token).unwrap(),
            Some(position())
        );
        assert_eq!(tokens.open(Listing::Stalled, "").unwrap(), None);

        // Refused: the other listing's token, another store's key, any
        // changed character, the plain format 1, and junk.
        let refused = |tokens: &PageTokens, listing, token: &str| {
            matches!(
                tokens.open(listing, token),
                Err(CommandError::InvalidArgument { .. })
            )
        };
        let as_stalled = format!("s2.{}", &token[3..]);
        assert!(refused(&tokens, Listing::Stalled, &as_stalled));
        assert!(refused(
            &PageTokens::new(&fresh_key()),
            Listing::ReviewQueue,
            &token
        ));
        for at in 3..token.len() {
            let mut changed = token.clone().into_bytes();
            changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(changed).unwrap();
            assert!(refused(&tokens, Listing::ReviewQueue, &changed), "{at}");
        }
        let plain = format!("r1.{}", position().as_str());
        assert!(refused(&tokens, Listing::ReviewQueue, &plain));
        for junk in ["r2.", "r2.zz", "r2.0", &format!("r2.{}", "00".repeat(2000))] {
            assert!(refused(&tokens, Listing::ReviewQueue, junk), "{junk}");
        }
    }
}

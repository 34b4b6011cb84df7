//! The bodies of the shared secrets (see `crate::store::schema::secrets`).

use serde::{Deserialize, Serialize};

use super::{invalid, Invalid, Stored};
use crate::store::schema::PageTokenKey;

impl Stored for PageTokenKey {
    type Body = PageTokenKeyBody;
    const FORMAT: u64 = 1;
}

#[derive(Serialize, Deserialize)]
pub(in crate::store::schema) struct PageTokenKeyBody {
    /// 64 hex digits.
    key: String,
}

impl From<&PageTokenKey> for PageTokenKeyBody {
    fn from(key: &PageTokenKey) -> PageTokenKeyBody {
        PageTokenKeyBody {
            key: key.0.iter().map(|byte| format!("{byte:02x}")).collect(),
        }
    }
}

impl TryFrom<PageTokenKeyBody> for PageTokenKey {
    type Error = Invalid;
    fn try_from(body: PageTokenKeyBody) -> Result<PageTokenKey, Invalid> {
        // Written as a SHA-256 is: 32 bytes in hex.
        crate::domain::access::parse_sha256(&body.key)
            .map(PageTokenKey)
            .ok_or_else(|| invalid("a page token key that is not 64 hex digits"))
    }
}

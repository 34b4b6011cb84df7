//! `payvisor auth …` (keys and access lists) and the credentials every
//! client command presents.

use anyhow::Context;
use clap::Subcommand;
use tonic::metadata::{Ascii, MetadataValue};

use crate::auth::new_key;
use crate::domain::access::AccessList;
use crate::grpc::auth::AUTHORIZATION;
use crate::out;
use crate::secret::Secret;

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Draw a new API key: prints the key once, and the entry to add to
    /// the access list (which holds only the SHA-256 of its secret).
    NewKey {
        /// A role of the key (repeatable): gateway, support, reviewer,
        /// oncall, admin, or node (a cluster node's own key).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// The key's id (a-z, 0-9, '-'); random when omitted.
        #[arg(long)]
        id: Option<String>,
        /// Limit the key to this account (repeatable).
        #[arg(long = "account")]
        accounts: Vec<String>,
        /// Limit the key to accounts whose id starts with this.
        #[arg(long)]
        account_prefix: Option<String>,
        /// When the key stops working, RFC 3339 (e.g. 2027-06-30T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// Calls per second the key may make (default: its roles' rate in
        /// the list, else 5,000), with --burst.
        #[arg(long, requires = "burst")]
        rate_per_second: Option<u32>,
        /// Calls the key may make at once before the rate applies.
        #[arg(long, requires = "rate_per_second")]
        burst: Option<u32>,
        /// Print JSON: `{"key": ..., "entry": {...}}`.
        #[arg(long)]
        json: bool,
    },
    /// Check an access list as the server would load it; every problem is
    /// listed (exit 1 if any).
    Check {
        /// The access list (JSON).
        file: std::path::PathBuf,
    },
}

/// Runs an `auth` command.
pub fn auth(command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::NewKey {
            roles,
            id,
            accounts,
            account_prefix,
            expires,
            rate_per_second,
            burst,
            json,
        } => {
            let fresh = new_key(id.as_deref()).map_err(anyhow::Error::msg)?;
            let mut entry = serde_json::json!({
                "id": fresh.id,
                "secret_sha256": fresh.secret_sha256,
                "roles": roles,
            });
            if !accounts.is_empty() {
                entry["accounts"] = serde_json::json!(accounts);
            }
            if let Some(prefix) = account_prefix {
                entry["account_prefix"] = serde_json::json!(prefix);
            }
            if let Some(expires) = expires {
                entry["expires"] = serde_json::json!(expires);
            }
            if let (Some(per_second), Some(burst)) = (rate_per_second, burst) {
                entry["rate"] = serde_json::json!({"per_second": per_second, "burst": burst});
            }
            // The entry is checked as the server will read it.
            let document = serde_json::json!({ "keys": [entry] }).to_string();
            if let Err(error) = AccessList::parse(&document) {
                anyhow::bail!(
                    "this key would be refused:\n  {}",
                    error.problems.join("\n  ")
                );
            }
            if json {
                out!(
                    "{}",
                    serde_json::json!({ "key": fresh.key.expose(), "entry": entry })
                );
            } else {
                out!("API key (shown only now; keep it in a secret store):");
                out!("  {}", fresh.key.expose());
                out!("Add this entry to \"keys\" in the access list (--auth FILE):");
                out!("  {entry}");
            }
            Ok(())
        }
        AuthCommand::Check { file } => {
            let (list, _) = crate::reload::load::<AccessList>(&file)?;
            out!(
                "{}: valid, {} keys, {} certificates",
                file.display(),
                list.keys.len(),
                list.certificates.len()
            );
            Ok(())
        }
    }
}

/// `--server` as a URL: `host:port` alone means `http://host:port`.
pub fn server_url(server: &str) -> anyhow::Result<String> {
    if server.contains("://") {
        Ok(server.to_owned())
    } else if server.is_empty() {
        anyhow::bail!("--server is empty (e.g. http://127.0.0.1:50051)")
    } else {
        Ok(format!("http://{server}"))
    }
}

/// Whether `url` (http or https) names this machine.
fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// TLS for an `https://` server: its CA (or the system's roots) and, for
/// mutual TLS, this client's certificate.
pub fn client_tls(
    options: &super::ClientOptions,
) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &options.tls_ca {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read(path)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&options.tls_client_cert, &options.tls_client_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

/// The API key presented on every call, as a gRPC interceptor.
#[derive(Clone)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    /// The credentials for `server`. A key is refused for a plaintext
    /// connection beyond this machine: anyone on the path would read it.
    pub fn for_server(server: &str, key: Option<&Secret>) -> anyhow::Result<Credentials> {
        let Some(key) = key else {
            return Ok(Credentials(None));
        };
        if !server.starts_with("https://") && !is_loopback(server) {
            anyhow::bail!(
                "refusing to send the API key in plaintext to {server}: use https:// or a loopback address"
            );
        }
        let mut value: MetadataValue<Ascii> = format!("Bearer {}", key.expose())
            .parse()
            .context("the API key has characters a header cannot carry")?;
        value.set_sensitive(true);
        Ok(Credentials(Some(value)))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_goes_in_plaintext_to_loopback_only() {
        let key = Secret::new("pvk_a_b");
        for local in [
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
        ] {
            assert!(
                Credentials::for_server(local, Some(&key)).is_ok(),
                "{local}"
            );
        }
        let refused = Credentials::for_server("http://10.0.0.5:50051", Some(&key))
            .err()
            .unwrap()
            .to_string();
        assert!(
            refused.contains("refusing to send the API key in plaintext"),
            "{refused}"
        );
        assert!(!refused.contains("pvk_a_b"));
        assert!(Credentials::for_server("http://10.0.0.5:50051", None).is_ok());
        assert_eq!(
            server_url("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(server_url("https://x:1").unwrap(), "https://x:1");
    }
}

//! TLS on payvisor's listeners (gRPC, bank callbacks, metrics), with
//! optional client certificates (mutual TLS), on rustls with ring. The
//! certificate, key and client CA are PEM files, re-read on a period and
//! swapped in when they change (a renewed certificate needs no restart);
//! a change that does not load is logged and the files in force stay.
//!
//! The gRPC server takes its connections from [`incoming`], which does the
//! handshakes (bounded in number and time) and hands tonic each
//! connection with its [`TlsPeer`]: the client certificate's subject is
//! what the access list's `certificates` name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;

use crate::limits;
use crate::shutdown::Shutdown;

/// Where a listener's certificate, key and (for mutual TLS) client CA are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by one of these.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS files could not be used. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The files' contents, to notice a change.
#[derive(Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let unreadable = |reason: String| TlsError::Read {
        path: path.display().to_string(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|error| unreadable(error.to_string()))?
        .len();
    if size > limits::TLS_FILE_BYTES_MAX as u64 {
        return Err(unreadable(format!(
            "larger than {} bytes",
            limits::TLS_FILE_BYTES_MAX
        )));
    }
    std::fs::read(path).map_err(|error| unreadable(error.to_string()))
}

/// PEM certificates, in order (a leaf and its chain, or CA roots).
pub fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("not PEM certificates: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
        Ok(Contents {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }

    /// A server configuration speaking `alpn`.
    fn configure(&self, files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let chain = certificates(&files.cert, &self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| TlsError::Invalid {
            path: files.key.display().to_string(),
            reason: "not a PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Invalid {
                path: files.cert.display().to_string(),
                reason: error.to_string(),
            })?;
        let builder = match (&files.client_ca, &self.client_ca) {
            (Some(path), Some(pem)) => {
                let mut roots = RootCertStore::empty();
                for certificate in certificates(path, pem)? {
                    roots.add(certificate).map_err(|error| TlsError::Invalid {
                        path: path.display().to_string(),
                        reason: error.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|error| TlsError::Invalid {
                            path: path.display().to_string(),
                            reason: error.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|error| TlsError::Invalid {
                    path: files.key.display().to_string(),
                    reason: format!("does not go with the certificate: {error}"),
                })?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(config)
    }
}

/// A listener's TLS configuration in force, reloaded when its files change.
pub struct ServerTls {
    files: TlsFiles,
    alpn: Vec<&'static [u8]>,
    current: RwLock<(Arc<ServerConfig>, Contents)>,
}

/// ALPN of gRPC (HTTP/2).
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP/1.1 endpoints (callbacks, metrics).
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

impl ServerTls {
    /// Loads `files` for a listener speaking `alpn`; fails on any problem.
    pub fn load(files: TlsFiles, alpn: &[&'static [u8]]) -> Result<ServerTls, TlsError> {
        let contents = Contents::read(&files)?;
        let config = contents.configure(&files, alpn)?;
        Ok(ServerTls {
            files,
            alpn: alpn.to_vec(),
            current: RwLock::new((Arc::new(config), contents)),
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        tokio_rustls::TlsAcceptor::from(Arc::clone(&current.0))
    }

    /// Re-reads the files; `Ok(true)` when changed ones are now in force.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let contents = Contents::read(&self.files)?;
        if self
            .current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .1
            == contents
        {
            return Ok(false);
        }
        let config = contents.configure(&self.files, &self.alpn);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        match config {
            Ok(config) => {
                *current = (Arc::new(config), contents);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                Ok(true)
            }
            Err(error) => {
                // Remembered, so a bad change is reported once.
                current.1 = contents;
                Err(error)
            }
        }
    }

    /// Checks the files every [`limits::TLS_RELOAD_EVERY`] until shutdown.
    pub async fn watch_until(self: Arc<Self>, shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(limits::TLS_RELOAD_EVERY);
        loop {
            tokio::select! {
                biased;
                () = shutdown.signalled() => return,
                _ = ticks.tick() => {}
            }
            let tls = Arc::clone(&self);
            let reloaded = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
            if let Ok(Err(error)) = reloaded {
                tracing::error!(%error, "TLS files not reloaded; the previous ones stay in force");
            }
        }
    }

    /// Completes the handshake of `stream`, within the handshake bound.
    pub async fn accept(&self, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
        let peer = stream.peer_addr().ok();
        let handshake = self.acceptor().accept(stream);
        match tokio::time::timeout(limits::TLS_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                // A plaintext client on a TLS port ends here.
                tracing::debug!(?peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(?peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Who is at the other end of a TLS connection (a request extension).
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate's subject (`CN=…,O=…`), with
    /// mutual TLS.
    pub client_subject: Option<String>,
}

/// A gRPC connection over TLS, as tonic takes it.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl TlsConnection {
    fn new(stream: TlsStream<TcpStream>) -> TlsConnection {
        let (tcp, session) = stream.get_ref();
        let client_subject = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject_of(leaf.as_ref()));
        let peer = TlsPeer {
            remote_addr: tcp.peer_addr().ok(),
            client_subject,
        };
        TlsConnection { stream, peer }
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The gRPC server's connections on `listener`: accepted, handshaken
/// (at most [`limits::TLS_HANDSHAKES_IN_FLIGHT`] at once, each within
/// [`limits::TLS_HANDSHAKE_TIMEOUT`]) and handed over, until `shutdown`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: Shutdown,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConnection>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(limits::TLS_HANDSHAKES_IN_FLIGHT);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(limits::TLS_HANDSHAKES_IN_FLIGHT));
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = shutdown.signalled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "gRPC accept failed");
                        tokio::time::sleep(limits::HTTP_ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = Arc::clone(&handshakes).try_acquire_owned() else {
                tracing::warn!(%peer, "too many TLS handshakes in progress; closing");
                continue;
            };
            // No Nagle: a response's frames go out at once.
            let _ = stream.set_nodelay(true);
            let tls = Arc::clone(&tls);
            let sender = sender.clone();
            tokio::spawn(async move {
                let _slot = slot;
                if let Some(stream) = tls.accept(stream).await {
                    let _ = sender.send(Ok(TlsConnection::new(stream))).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// The subject of a DER certificate as `CN=…,O=…`, in the certificate's
/// order: RDNs joined by `,`, the attributes of a multi-valued RDN by `+`
/// (RFC 4514's separators). Attributes without a short name are written as
/// their dotted OID with the value's DER in hex (`2.5.4.5=#13…`), so two
/// subjects that differ anywhere are different identities. `,`, `=`, `+`
/// and `\` in values are escaped with `\`. `None` for anything it cannot
/// read: such a client has no identity.
pub fn subject_of(certificate: &[u8]) -> Option<String> {
    let (certificate, _) = der(certificate, 0x30)?;
    let (mut tbs, _) = der(certificate, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs, 0xa0)?.1; // version
    }
    let rest = der(tbs, 0x02)?.1; // serial number
    let rest = der(rest, 0x30)?.1; // signature algorithm
    let rest = der(rest, 0x30)?.1; // issuer
    let rest = der(rest, 0x30)?.1; // validity
    let (mut names, _) = der(rest, 0x30)?; // subject
    let mut rdns = Vec::new();
    while !names.is_empty() {
        let (mut set, next) = der(names, 0x31)?;
        names = next;
        let mut attributes = Vec::new();
        while !set.is_empty() {
            let (attribute, next) = der(set, 0x30)?;
            set = next;
            attributes.push(attribute_text(attribute)?);
        }
        if attributes.is_empty() {
            return None;
        }
        rdns.push(attributes.join("+"));
    }
    (!rdns.is_empty()).then(|| rdns.join(","))
}

/// One `type=value` of a subject (see [`subject_of`]).
fn attribute_text(attribute: &[u8]) -> Option<String> {
    let (oid, value) = der(attribute, 0x06)?;
    let label = match oid {
        [0x55, 0x04, 0x03] => Some("CN"),
        [0x55, 0x04, 0x06] => Some("C"),
        [0x55, 0x04, 0x07] => Some("L"),
        [0x55, 0x04, 0x08] => Some("ST"),
        [0x55, 0x04, 0x09] => Some("STREET"),
        [0x55, 0x04, 0x0a] => Some("O"),
        [0x55, 0x04, 0x0b] => Some("OU"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => Some("DC"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => Some("UID"),
        // Not RFC 4514's, but as OpenSSL writes them: common in client
        // certificates.
        [0x55, 0x04, 0x05] => Some("serialNumber"),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => Some("emailAddress"),
        _ => None,
    };
    let tag = *value.first()?;
    let (content, after) = der(value, tag)?;
    if !after.is_empty() {
        return None;
    }
    let text = match tag {
        // UTF8String, PrintableString, IA5String, TeletexString
        0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(content).ok(),
        _ => None,
    };
    match (label, text) {
        (Some(label), Some(text)) => {
            let escaped: String = text
                .chars()
                .flat_map(|c| {
                    let escape = matches!(c, ',' | '=' | '\\' | '+');
                    escape.then_some('\\').into_iter().chain([c])
                })
                .collect();
            Some(format!("{label}={escaped}"))
        }
        // Any other attribute, or a value in another string type.
        _ => {
            let hex: String = value.iter().map(|byte| format!("{byte:02x}")).collect();
            Some(format!("{}=#{hex}", dotted_oid(oid)?))
        }
    }
}

/// An OID's DER content as dotted decimal (`2.5.4.5`).
fn dotted_oid(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut arc: u64 = 0;
    for (index, &byte) in oid.iter().enumerate() {
        if arc > u64::MAX >> 7 || (arc == 0 && byte == 0x80) {
            // Too long, or not minimal (a leading 0x80): one OID, one
            // spelling.
            return None;
        }
        arc = (arc << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (arc / 40).min(2);
                arcs.extend([first, arc - first * 40]);
            } else {
                arcs.push(arc);
            }
            arc = 0;
        } else if index + 1 == oid.len() {
            return None; // cut off inside an arc
        }
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// One DER element of `tag` at the start of `input`: its content and what
/// follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let (digits, after) = rest.split_at(bytes);
        rest = after;
        digits
            .iter()
            .fold(0usize, |length, &digit| (length << 8) | usize::from(digit))
    };
    if rest.len() < length {
        return None;
    }
    Some(rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn certificate(subject: &[(DnType, &str)]) -> (String, String, Vec<u8>) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        (
            certificate.pem(),
            key.serialize_pem(),
            certificate.der().to_vec(),
        )
    }

    #[test]
    fn the_subject_is_read_in_order_and_escaped() {
        let (_, _, der) = certificate(&[
            (DnType::CommonName, "support-tool"),
            (DnType::OrganizationName, "Acme, Inc."),
            (DnType::CountryName, "DE"),
        ]);
        assert_eq!(
            subject_of(&der).as_deref(),
            Some("CN=support-tool,O=Acme\\, Inc.,C=DE")
        );
        // Nothing it cannot read is an identity, and nothing panics.
        assert_eq!(subject_of(&[]), None);
        assert_eq!(subject_of(&der[..der.len() / 2]), None);
        for cut in 0..der.len().min(200) {
            let _ = subject_of(&der[cut..]);
        }
        assert_eq!(subject_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    /// A DER element: `tag`, a length, `content`.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// A certificate skeleton around `subject` (the fields before it are
    /// all `subject_of` reads).
    fn with_subject(subject: &[u8]) -> Vec<u8> {
        let mut tbs = tlv(0xa0, &tlv(0x02, &[2]));
        tbs.extend(tlv(0x02, &[1]));
        tbs.extend(tlv(0x30, &[]));
        tbs.extend(tlv(0x30, &[]));
        tbs.extend(tlv(0x30, &[]));
        tbs.extend(tlv(0x30, subject));
        tlv(0x30, &tlv(0x30, &tbs))
    }

    fn attribute(oid: &[u8], tag: u8, value: &str) -> Vec<u8> {
        let mut content = tlv(0x06, oid);
        content.extend(tlv(tag, value.as_bytes()));
        tlv(0x30, &content)
    }

    #[test]
    fn multi_valued_and_unnamed_attributes_keep_subjects_apart() {
        const CN: &[u8] = &[0x55, 0x04, 0x03];
        const OU: &[u8] = &[0x55, 0x04, 0x0b];
        const SERIAL_NUMBER: &[u8] = &[0x55, 0x04, 0x05];
        const EMAIL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
        const TITLE: &[u8] = &[0x55, 0x04, 0x0c];
        // One RDN of two attributes, then another RDN.
        let mut both = attribute(CN, 0x0c, "ops");
        both.extend(attribute(OU, 0x0c, "pay"));
        let mut subject = tlv(0x31, &both);
        subject.extend(tlv(0x31, &attribute(OU, 0x0c, "eu")));
        assert_eq!(
            subject_of(&with_subject(&subject)).as_deref(),
            Some("CN=ops+OU=pay,OU=eu")
        );
        // Attributes without a short name are kept, by OID and value:
        // certificates that differ only there are different identities.
        let named = |serial: &str| {
            let mut subject = tlv(0x31, &attribute(CN, 0x0c, "ops"));
            subject.extend(tlv(0x31, &attribute(SERIAL_NUMBER, 0x13, serial)));
            subject_of(&with_subject(&subject)).unwrap()
        };
        assert_eq!(named("1"), "CN=ops,serialNumber=1");
        assert_ne!(named("1"), named("2"));
        let subject = tlv(0x31, &attribute(EMAIL, 0x16, "a@b"));
        assert_eq!(
            subject_of(&with_subject(&subject)).as_deref(),
            Some("emailAddress=a@b")
        );
        let subject = tlv(0x31, &attribute(TITLE, 0x0c, "cto"));
        assert_eq!(
            subject_of(&with_subject(&subject)).as_deref(),
            Some("2.5.4.12=#0c0363746f")
        );
        // An OID with a non-minimal arc (a leading 0x80): no identity.
        let subject = tlv(0x31, &attribute(&[0x55, 0x80, 0x04], 0x0c, "x"));
        assert_eq!(subject_of(&with_subject(&subject)), None);
        // A value that is not a string it reads: by its DER as well.
        let subject = tlv(0x31, &attribute(CN, 0x1e, "\0a"));
        assert_eq!(
            subject_of(&with_subject(&subject)).as_deref(),
            Some("2.5.4.3=#1e020061")
        );
        // An empty RDN, or an OID cut off inside an arc: no identity.
        assert_eq!(subject_of(&with_subject(&tlv(0x31, &[]))), None);
        let subject = tlv(0x31, &attribute(&[0x2a, 0x86], 0x0c, "x"));
        assert_eq!(subject_of(&with_subject(&subject)), None);
    }

    #[test]
    fn changed_files_are_reloaded_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        let (cert, key, _) = certificate(&[(DnType::CommonName, "one")]);
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let tls = ServerTls::load(files.clone(), ALPN_GRPC).unwrap();
        assert_eq!(tls.reload_if_changed(), Ok(false));
        let (cert, key, _) = certificate(&[(DnType::CommonName, "two")]);
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        assert_eq!(tls.reload_if_changed(), Ok(true));
        // A key that does not go with the certificate: refused, once.
        let (_, other_key, _) = certificate(&[(DnType::CommonName, "three")]);
        std::fs::write(&files.key, &other_key).unwrap();
        assert!(matches!(
            tls.reload_if_changed(),
            Err(TlsError::Invalid { .. })
        ));
        assert_eq!(tls.reload_if_changed(), Ok(false));
        std::fs::write(&files.key, "not a key").unwrap();
        let error = tls.reload_if_changed().unwrap_err().to_string();
        assert!(error.contains("not a PEM private key"), "{error}");
        // Key material never appears in an error.
        std::fs::write(&files.cert, &key).unwrap();
        let error = tls.reload_if_changed().unwrap_err().to_string();
        assert!(!error.contains("PRIVATE KEY"), "{error}");
        assert!(ServerTls::load(files, ALPN_GRPC).is_err());
    }
}

//! Certificates made for a test (rcgen, ring): a CA, and certificates it
//! signs for servers (SANs `localhost` and `127.0.0.1`) and clients (a
//! subject), written as PEM files in a directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A certificate authority whose certificate is at `cert`.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert: PathBuf,
    dir: PathBuf,
    name: String,
}

/// A certificate and its key, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Authority {
    /// A new CA named `name`, its certificate written in `dir`.
    pub fn new(dir: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = dir.join(format!("{name}.ca.pem"));
        std::fs::write(&cert, issuer.pem()).unwrap();
        Authority {
            issuer,
            cert,
            dir: dir.to_path_buf(),
            name: name.to_owned(),
        }
    }

    fn issue(&self, file: &str, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        // Named after the CA too: two CAs may issue the same subject.
        let issued = Issued {
            cert: self.dir.join(format!("{}.{file}.pem", self.name)),
            key: self.dir.join(format!("{}.{file}.key.pem", self.name)),
        };
        std::fs::write(&issued.cert, certificate.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// A server's (and, for a cluster node, also a client's) certificate
    /// for `localhost` and `127.0.0.1`, with subject `CN={name}`.
    pub fn server(&self, name: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(name, params)
    }

    /// A client's certificate with subject `CN={name}` (and `O={org}`).
    pub fn client(&self, name: &str, org: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, params)
    }
}

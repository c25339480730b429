//! How the daemon reaches the cluster store: its address and, for `etcds://`, the CA that
//! vouches for the server and this host's client certificate; and an etcd user to log in
//! as. Everything is checked when the daemon starts (before it changes anything), and the
//! files are read again for each new session, so that renewed certificates and a changed
//! password are picked up without a restart.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// The transport: plain HTTP/2 (`etcd://`) or TLS (`etcds://`).
#[derive(Debug, Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    /// `ca`: the CA certificates the server's must chain to (default: the system's roots);
    /// `client`: this host's certificate and key, for a store with `--client-cert-auth`.
    Tls {
        ca: Option<PathBuf>,
        client: Option<ClientCertificate>,
    },
}

#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An etcd user (etcd's `auth enable`), its password in a file of its own (not on the
/// command line, where `ps` shows it).
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub password_file: PathBuf,
}

/// The flags as given, before they are checked.
#[derive(Debug, Clone, Default)]
pub struct AccessFlags {
    pub url: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// Checked access to the store.
#[derive(Debug, Clone)]
pub struct StoreAccess {
    /// The URL as the user wrote it (in logs and errors).
    pub url: String,
    /// What etcd-client connects to: `http://HOST:PORT` or `https://HOST:PORT`, one per
    /// member of the store's cluster.
    pub endpoints: Vec<String>,
    transport: Transport,
    login: Option<Login>,
}

impl StoreAccess {
    /// Checks the flags together and reads every file once (so a missing or malformed one
    /// stops the daemon before it starts, with its name in the message).
    pub fn new(flags: AccessFlags) -> Result<Self, String> {
        let (endpoints, tls) = parse_store_url(&flags.url)?;
        let client = match (flags.cert, flags.key) {
            (Some(cert), Some(key)) => Some(ClientCertificate { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err("--cluster-cert needs --cluster-key".into()),
            (None, Some(_)) => return Err("--cluster-key needs --cluster-cert".into()),
        };
        let transport = match (tls, flags.ca, client) {
            (true, ca, client) => Transport::Tls { ca, client },
            (false, None, None) => Transport::Plain,
            (false, ..) => {
                return Err(format!(
                    "cluster store {:?}: --cluster-ca, --cluster-cert and --cluster-key need TLS: use etcds://HOST:PORT",
                    flags.url
                ));
            }
        };
        let login = match (flags.user, flags.password_file) {
            (Some(user), Some(password_file)) if !user.is_empty() && !user.contains(':') => {
                Some(Login {
                    user,
                    password_file,
                })
            }
            (Some(user), Some(_)) => return Err(format!("invalid --cluster-user {user:?}")),
            (None, None) => None,
            (Some(_), None) => return Err("--cluster-user needs --cluster-password-file".into()),
            (None, Some(_)) => return Err("--cluster-password-file needs --cluster-user".into()),
        };
        let access = Self {
            url: flags.url,
            endpoints,
            transport,
            login,
        };
        access.connect_options()?;
        Ok(access)
    }

    /// The options of one session: the files as they are now.
    pub fn connect_options(&self) -> Result<ConnectOptions, String> {
        let mut options = ConnectOptions::new();
        if let Transport::Tls { ca, client } = &self.transport {
            let mut tls = TlsOptions::new();
            tls = match ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(certificates(ca)?)),
                None => tls.with_native_roots(),
            };
            if let Some(ClientCertificate { cert, key }) = client {
                tls = tls.identity(Identity::from_pem(certificates(cert)?, private_key(key)?));
            }
            options = options.with_tls(tls);
        }
        if let Some(Login {
            user,
            password_file,
        }) = &self.login
        {
            options = options.with_user(user, password(password_file)?);
        }
        Ok(options)
    }
}

impl StoreAccess {
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls { .. })
    }

    /// The etcd user it logs in as.
    pub fn user(&self) -> Option<&str> {
        self.login.as_ref().map(|l| l.user.as_str())
    }

    /// What may be missing when a session failed with `error`: a TLS store that wants a
    /// client certificate just closes the connection (TLS 1.3 says why only to a client
    /// that sent one), which says nothing by itself.
    pub fn hint(&self, error: &str) -> Option<&'static str> {
        match &self.transport {
            // (The connection ends in one of several ways: a broken pipe, a cancelled call.)
            Transport::Tls { client: None, .. } if error.contains("transport") => Some(
                "if the store asks for client certificates (etcd's --client-cert-auth), give --cluster-cert and --cluster-key",
            ),
            _ => None,
        }
    }
}

/// Parses `etcd://HOST:PORT[,HOST:PORT…]` (or `http://`) and `etcds://…` (or `https://`)
/// into the endpoints etcd-client takes (every member of an etcd cluster, as Docker's
/// `--cluster-store` and Flannel's `--etcd-endpoints` take them) and whether it is TLS.
pub fn parse_store_url(url: &str) -> Result<(Vec<String>, bool), String> {
    let usage = || {
        format!("cluster store {url:?}: use etcd://HOST:PORT[,HOST:PORT…] or etcds://HOST:PORT[,…]")
    };
    let (rest, tls) = [
        ("etcd://", false),
        ("http://", false),
        ("etcds://", true),
        ("https://", true),
    ]
    .into_iter()
    .find_map(|(scheme, tls)| url.strip_prefix(scheme).map(|rest| (rest, tls)))
    .ok_or_else(usage)?;
    let scheme = if tls { "https" } else { "http" };
    let mut endpoints = vec![];
    for member in rest.split(',') {
        // (A second member may repeat the scheme, as etcdctl's --endpoints lists do.)
        let member = member
            .strip_prefix(&format!("{scheme}://"))
            .unwrap_or(member);
        let port = member.rsplit_once(':').map(|(_, port)| port);
        if member.is_empty()
            || member.contains('/')
            || port.is_none_or(|p| p.parse::<u16>().is_err())
        {
            return Err(usage());
        }
        let endpoint = format!("{scheme}://{member}");
        if !endpoints.contains(&endpoint) {
            endpoints.push(endpoint);
        }
    }
    Ok((endpoints, tls))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// A PEM file of one or more certificates, checked to be one.
fn certificates(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path, "certificate")?;
    let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match parsed {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        _ => Err(format!("{}: not a PEM certificate", path.display())),
    }
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1), checked to be one.
fn private_key(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path, "key")?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| format!("{}: not a PEM private key", path.display()))?;
    Ok(pem)
}

/// The password: the file's first line (as `etcdctl --password` takes it, without the
/// newline an editor or `echo` adds).
fn password(path: &Path) -> Result<String, String> {
    let bytes = read(path, "password file")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{}: the password is not UTF-8", path.display()))?;
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(line.to_owned()),
        _ => Err(format!("{}: the password file is empty", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(url: &str) -> AccessFlags {
        AccessFlags {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn urls() {
        let parse = |url| parse_store_url(url).unwrap();
        let one = |e: &str| vec![e.to_owned()];
        assert_eq!(
            parse("etcd://10.0.0.1:2379"),
            (one("http://10.0.0.1:2379"), false)
        );
        assert_eq!(
            parse("http://10.0.0.1:2379"),
            (one("http://10.0.0.1:2379"), false)
        );
        assert_eq!(
            parse("etcds://etcd.lan:2379"),
            (one("https://etcd.lan:2379"), true)
        );
        assert_eq!(
            parse("https://etcd.lan:2379"),
            (one("https://etcd.lan:2379"), true)
        );
        let members = vec![
            "https://10.0.0.1:2379".to_owned(),
            "https://10.0.0.2:2379".to_owned(),
            "https://10.0.0.3:2379".to_owned(),
        ];
        assert_eq!(
            parse("etcds://10.0.0.1:2379,10.0.0.2:2379,https://10.0.0.3:2379,10.0.0.1:2379"),
            (members, true)
        );
        for bad in [
            "etcd://10.0.0.1",
            "10.0.0.1:2379",
            "etcd://",
            "etcd://a:1/x",
            "ftp://a:1",
            "etcd://a:1,",
            "etcd://a:1,b",
            "etcd://a:99999",
        ] {
            assert!(parse_store_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_that_need_each_other() {
        let with = |f: fn(&mut AccessFlags)| {
            let mut flags = flags("etcds://10.0.0.1:2379");
            f(&mut flags);
            StoreAccess::new(flags).unwrap_err()
        };
        assert_eq!(
            with(|f| f.cert = Some("/c".into())),
            "--cluster-cert needs --cluster-key"
        );
        assert_eq!(
            with(|f| f.user = Some("root".into())),
            "--cluster-user needs --cluster-password-file"
        );
        assert_eq!(
            with(|f| f.password_file = Some("/p".into())),
            "--cluster-password-file needs --cluster-user"
        );
        let mut plain = flags("etcd://10.0.0.1:2379");
        plain.ca = Some("/ca.pem".into());
        assert!(
            StoreAccess::new(plain)
                .unwrap_err()
                .contains("use etcds://")
        );
    }

    #[test]
    fn files_are_checked() {
        let dir = std::env::temp_dir().join(format!("netbpf-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let mut tls = flags("etcds://10.0.0.1:2379");
        tls.ca = Some(junk.clone());
        assert!(
            StoreAccess::new(tls.clone())
                .unwrap_err()
                .contains("not a PEM certificate")
        );
        tls.ca = Some(dir.join("missing.pem"));
        assert!(
            StoreAccess::new(tls)
                .unwrap_err()
                .contains("cannot read certificate")
        );

        let secret = dir.join("password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        assert_eq!(password(&secret).unwrap(), "s3cret");
        std::fs::write(&secret, "\n").unwrap();
        assert!(password(&secret).unwrap_err().contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

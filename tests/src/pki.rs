//! Certificates made with `openssl` for a TLS cluster store: a CA, the server's (for its
//! IP address), a client's, and a second CA that signed neither (a server or client that
//! must not be trusted).

use std::path::{Path, PathBuf};

use crate::must;

pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Makes everything in `dir` for a server at `server_ip`.
    pub fn new(dir: &Path, server_ip: &str) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let pki = Self {
            dir: dir.to_owned(),
        };
        pki.make_ca("ca");
        pki.make_ca("rogue-ca");
        pki.sign(
            "server",
            "etcd",
            &format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth\n"),
        );
        pki.sign("client", "netbpf", "extendedKeyUsage=clientAuth\n");
        pki
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `ca.pem`, `rogue-ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
    pub fn ca(&self) -> String {
        self.file("ca.pem")
    }

    fn make_ca(&self, name: &str) {
        must(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=netbpf test {name}"),
                "-keyout",
                &self.file(&format!("{name}.key")),
                "-out",
                &self.file(&format!("{name}.pem")),
            ],
        );
    }

    /// A key and a certificate for `cn`, signed by `ca`, with `extensions`.
    fn sign(&self, name: &str, cn: &str, extensions: &str) {
        let ext = self.file(&format!("{name}.ext"));
        std::fs::write(&ext, extensions).expect("extensions");
        let csr = self.file(&format!("{name}.csr"));
        must(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &self.file(&format!("{name}.key")),
                "-out",
                &csr,
            ],
        );
        must(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &self.ca(),
                "-CAkey",
                &self.file("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &self.file(&format!("{name}.pem")),
            ],
        );
    }
}

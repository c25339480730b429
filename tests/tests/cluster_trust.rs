//! A cluster store over TLS with client certificates and an etcd user: the daemon reaches it
//! only as configured, trusts no server its CA did not sign, and refuses flags that cannot
//! work before it changes anything.

use netbpf_tests::{
    TestHost,
    cluster::{Etcd, Underlay, cluster_args, create_overlay, host_with},
    eventually,
    hostile::sleeper,
};

fn etcdctl_ok(etcd: &Etcd, args: &[&str]) -> String {
    let out = etcd.etcdctl(args);
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemon flags that reach `etcd` with this CA, client certificate and password file
/// (each `None` leaves that flag out).
fn access_flags(etcd: &Etcd, ca: &str, client: bool, password: Option<&str>) -> Vec<String> {
    let pki = etcd.pki.as_ref().unwrap();
    let mut flags = vec!["--cluster-ca".to_owned(), pki.file(ca)];
    if client {
        flags.extend([
            "--cluster-cert".into(),
            pki.file("client.pem"),
            "--cluster-key".into(),
            pki.file("client.key"),
        ]);
    }
    if let Some(password) = password {
        let file = pki.dir.join(format!("password-{password}"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        flags.extend([
            "--cluster-user".into(),
            "root".into(),
            "--cluster-password-file".into(),
            file.display().to_string(),
        ]);
    }
    flags
}

/// A host whose daemon starts with `flags` but cannot open a session with the store: an
/// overlay change is refused, `netbpf info` says `why`, and nothing of it reaches the store.
fn refused(underlay: &Underlay, etcd: &Etcd, n: u8, flags: &[String], why: &str) {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let host = host_with(underlay, etcd, n, &flags);
    eventually(15, "the session to fail", || {
        host.json(&["info"])["cluster_store"]["error"].is_string()
    });
    let store = &host.json(&["info"])["cluster_store"];
    assert_eq!(store["connected"], false, "{store}");
    assert!(
        store.to_string().contains(why),
        "expected {why:?} in {store}"
    );
    assert!(host.daemon_log().contains(why), "{}", host.daemon_log());
    let err = host.fails(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.160.0.0/16",
        "other",
    ]);
    assert!(
        err.contains("unreachable") || err.contains("did not answer in time"),
        "{err}"
    );
}

#[test]
fn a_tls_store_is_reached_only_with_its_ca_a_client_certificate_and_the_password() {
    let underlay = Underlay::new();
    let etcd = Etcd::start_tls(&underlay, "10.0.0.250");
    // etcd's authentication: a root user (etcdctl grants it the root role on enable).
    etcdctl_ok(&etcd, &["user", "add", "root:s3cret"]);
    etcdctl_ok(&etcd, &["auth", "enable"]);

    let trusted = access_flags(&etcd, "ca.pem", true, Some("s3cret"));
    let trusted: Vec<&str> = trusted.iter().map(String::as_str).collect();
    let a = host_with(&underlay, &etcd, 1, &trusted);
    create_overlay(&[&a], "10.150.0.0/16", &[]);
    let store = &a.json(&["info"])["cluster_store"];
    assert_eq!(store["url"], "etcds://10.0.0.250:2379", "{store}");
    assert_eq!(store["tls"], true, "{store}");
    assert_eq!(store["user"], "root", "{store}");
    assert_eq!(store["connected"], true, "{store}");
    sleeper(&a, "c", "ovl");
    let keys = etcdctl_ok(
        &etcd,
        &[
            "--user",
            "root:s3cret",
            "get",
            "--prefix",
            "--keys-only",
            "/netbpf/v1/",
        ],
    );
    assert!(keys.contains("/netbpf/v1/networks/ovl"), "{keys}");
    assert!(keys.contains("/netbpf/v1/blocks/ovl/"), "{keys}");

    // A server its CA did not sign (here: the CA given is another one) is not trusted.
    refused(
        &underlay,
        &etcd,
        2,
        &access_flags(&etcd, "rogue-ca.pem", true, Some("s3cret")),
        "UnknownIssuer",
    );
    // The store asks for a client certificate (and just closes the connection of a
    // client without one: the log says what may be missing).
    refused(
        &underlay,
        &etcd,
        3,
        &access_flags(&etcd, "ca.pem", false, Some("s3cret")),
        "give --cluster-cert and --cluster-key",
    );
    // And for the user's password.
    refused(
        &underlay,
        &etcd,
        4,
        &access_flags(&etcd, "ca.pem", true, Some("wrong")),
        "invalid user ID or password",
    );

    // Only the trusted host wrote anything: one block, its own.
    let blocks = etcdctl_ok(
        &etcd,
        &[
            "--user",
            "root:s3cret",
            "get",
            "--prefix",
            "/netbpf/v1/blocks/",
        ],
    );
    assert_eq!(blocks.matches("/netbpf/v1/blocks/").count(), 1, "{blocks}");
    assert!(blocks.contains("10.0.0.1"), "{blocks}");
    assert!(
        !keys.contains("other") && !blocks.contains("other"),
        "{blocks}"
    );
}

#[test]
fn store_flags_that_cannot_work_stop_the_daemon_before_it_changes_anything() {
    let underlay = Underlay::new();
    let etcd = Etcd::start_tls(&underlay, "10.0.0.250");
    let pki = etcd.pki.as_ref().unwrap();
    let junk = pki.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.display().to_string();
    let ca = pki.ca();
    let mut host = TestHost::bare();
    let base = cluster_args(&underlay, &etcd, &host, 1);
    let links = host.links(&host.host_ns);
    let plain = format!("etcd://{}:2379", etcd.addr);
    let tls = etcd.url();
    let cases: [(&str, &[&str], &str); 5] = [
        (
            &tls,
            &["--cluster-ca", &junk],
            "junk.pem: not a PEM certificate",
        ),
        (
            &tls,
            &["--cluster-ca", "/nonexistent.pem"],
            "cannot read certificate /nonexistent.pem",
        ),
        (
            &tls,
            &["--cluster-cert", &ca],
            "--cluster-cert needs --cluster-key",
        ),
        (
            &tls,
            &["--cluster-user", "root"],
            "--cluster-user needs --cluster-password-file",
        ),
        (&plain, &["--cluster-ca", &ca], "use etcds://HOST:PORT"),
    ];
    for (url, flags, why) in cases {
        // (`base` is `--cluster-store URL --vtep-addr ADDR`.)
        let mut args = vec!["--cluster-store", url, "--vtep-addr", &base[3]];
        args.extend(flags);
        let said = host.daemon_must_fail(&args);
        assert!(said.contains(why), "{flags:?}: expected {why:?} in {said}");
        assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
        assert!(
            host.mounts().is_empty(),
            "{flags:?} left mounts: {:?}",
            host.mounts()
        );
        assert_eq!(
            host.links(&host.host_ns),
            links,
            "{flags:?} left interfaces"
        );
    }
}

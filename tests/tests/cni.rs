//! netbpf as a CNI plugin (docs/runtimes.md), driven as a runtime drives it: the spec's
//! sequences (ADD, CHECK, DEL, DEL again, GC, STATUS, VERSION) against a real daemon, with
//! namespaces made as a runtime makes them, and traffic through what ADD built.

use std::process::Stdio;

use netbpf_tests::{
    TestHost,
    cni::{self, Attachment, Sandboxes},
    must, succeeds,
};
use serde_json::{Value, json};

fn conf(host: &TestHost, version: &str, network: &str, runtime: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": network,
        "type": "netbpf",
        "socket": host.socket,
        "capabilities": {"portMappings": true, "aliases": true},
        "runtimeConfig": runtime,
    })
}

fn in_sandbox(sandboxes: &Sandboxes, i: usize, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new("ip");
    command
        .args(["netns", "exec", sandboxes.name(i)])
        .args(args);
    command
}

#[test]
fn the_cni_plugin_follows_the_spec_sequences() {
    let mut host = TestHost::new();
    host.ok(&["network", "create", "--subnet", "10.120.0.0/24", "cninet"]);
    let sandboxes = Sandboxes::new(3);
    let ports =
        json!({"portMappings": [{"hostPort": 8088, "containerPort": 8000, "protocol": "tcp"}]});
    let web_conf = conf(&host, "1.0.0", "cninet", ports);
    let plain_conf = conf(&host, "1.0.0", "cninet", json!({}));

    let web = Attachment::new("ctr-web", &sandboxes.path(0), "eth0");
    let client = Attachment::new("ctr-client", &sandboxes.path(1), "eth0");
    let old = Attachment::new("ctr-old", &sandboxes.path(2), "net1");
    // ADD: the result names the interface in its sandbox, the address, gateway, route and
    // the embedded DNS.
    let add = web.call("ADD", "IgnoreUnknown=1;K8S_POD_NAME=web", &web_conf);
    assert_eq!(add.code, 0, "{}", add.output);
    let r = &add.output;
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["sandbox"], sandboxes.path(0));
    let web_ip = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(web_ip.starts_with("10.120.0."), "{r}");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert_eq!(r["ips"][0]["gateway"], "10.120.0.1");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r["dns"]["nameservers"][0], "127.0.0.11");
    let mac = must(
        "ip",
        &["-n", sandboxes.name(0), "-j", "link", "show", "eth0"],
    );
    assert!(
        mac.contains(r["interfaces"][0]["mac"].as_str().unwrap()),
        "{mac}"
    );
    let add_b = client.call("ADD", "K8S_POD_NAME=client", &plain_conf);
    assert_eq!(add_b.code, 0, "{}", add_b.output);

    // What ADD built carries traffic: a ping, a name from the embedded DNS, the published
    // port from outside through BPF DNAT.
    assert!(
        succeeds(in_sandbox(
            &sandboxes,
            1,
            &["ping", "-c", "1", "-W", "2", &web_ip]
        )),
        "ping"
    );
    let dig = must(
        "ip",
        &[
            "netns",
            "exec",
            sandboxes.name(1),
            "dig",
            "+short",
            "+time=2",
            "@127.0.0.11",
            "web",
        ],
    );
    assert_eq!(dig.trim(), web_ip, "the pod name in the embedded DNS");
    let mut server = in_sandbox(&sandboxes, 0, &["python3", "-m", "http.server", "8000"]);
    server
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    host.extra.push(server.spawn().unwrap());
    netbpf_tests::eventually(10, "the portMappings port to answer", || {
        host.answers_from_outside("http://198.18.0.2:8088/")
    });

    // CHECK against the previous result; a second ADD is refused.
    let mut check_conf = web_conf.clone();
    check_conf["prevResult"] = add.output.clone();
    let check = web.call("CHECK", "", &check_conf);
    assert_eq!(check.code, 0, "{}", check.output);
    let again = web.call("ADD", "", &web_conf);
    assert_eq!(again.code, 1);
    assert!(
        again.output["msg"]
            .as_str()
            .unwrap()
            .contains("DEL it first"),
        "{}",
        again.output
    );

    // DEL, and DEL again: both succeed; the interface and the published port are gone.
    let mut del_conf = web_conf.clone();
    del_conf["prevResult"] = add.output.clone();
    for round in ["DEL", "DEL again"] {
        let del = web.call("DEL", "", &del_conf);
        assert_eq!(del.code, 0, "{round}: {}", del.output);
    }
    assert!(
        !succeeds(in_sandbox(&sandboxes, 0, &["ip", "link", "show", "eth0"])),
        "eth0 left behind"
    );
    assert!(!host.answers_from_outside("http://198.18.0.2:8088/"));

    // GC (a 1.1 command) with no valid attachment left removes the client's.
    let mut gc_conf = conf(&host, "1.1.0", "cninet", json!({}));
    gc_conf["cni.dev/valid-attachments"] = json!([]);
    let gc = cni::call_plugin("GC", &gc_conf);
    assert_eq!(gc.code, 0, "{}", gc.output);
    assert!(
        !host.ok(&["ps", "-a"]).contains("cni-"),
        "GC left an attachment"
    );

    // STATUS and VERSION.
    assert_eq!(cni::call_plugin("STATUS", &gc_conf).code, 0);
    let version = cni::call_plugin("VERSION", &plain_conf);
    let versions = version.output["supportedVersions"].to_string();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(v), "{versions}");
    }

    // A 0.4.0 config (Podman's) gets the 0.4.0 result layout.
    let old = old.call("ADD", "", &conf(&host, "0.4.0", "cninet", json!({})));
    assert_eq!(old.code, 0, "{}", old.output);
    assert_eq!(old.output["ips"][0]["version"], "4", "{}", old.output);
    assert_eq!(old.output["interfaces"][0]["name"], "net1");
}

#[test]
fn the_cni_plugin_reports_errors_as_the_spec_says() {
    let host = TestHost::new();
    let sandboxes = Sandboxes::new(1);
    let ctr = Attachment::new("ctr", &sandboxes.path(0), "eth0");
    // An unknown network: the daemon's one-line message, code 7, nothing made.
    let unknown = ctr.call("ADD", "", &conf(&host, "1.0.0", "nope", json!({})));
    assert_eq!(unknown.code, 1);
    assert_eq!(unknown.output["code"], 7, "{}", unknown.output);
    assert!(
        unknown.output["msg"].as_str().unwrap().contains("nope"),
        "{}",
        unknown.output
    );
    assert!(!succeeds(in_sandbox(
        &sandboxes,
        0,
        &["ip", "link", "show", "eth0"]
    )));
    // An unknown command; a daemon that is not there (try again later).
    let bogus = ctr.call("FROB", "", &conf(&host, "1.0.0", "bridge", json!({})));
    assert_eq!(
        (bogus.code, bogus.output["code"].clone()),
        (1, json!(4)),
        "{}",
        bogus.output
    );
    let mut away = conf(&host, "1.1.0", "bridge", json!({}));
    away["socket"] = json!("/nonexistent/netbpf.sock");
    let down = ctr.call("ADD", "", &away);
    assert_eq!(down.output["code"], 11, "{}", down.output);
    let status = cni::call_plugin("STATUS", &away);
    assert_eq!(status.output["code"], 50, "{}", status.output);
}

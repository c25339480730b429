//! Driving `netbpf` as a CNI runtime drives a plugin: the binary with `CNI_*` variables set
//! and the network config on stdin, and namespaces made the way a runtime makes them.

use std::{io::Write as _, process::Stdio};

use serde_json::Value;

use crate::{host::netbpf_bin, must, unique_id};

/// What one plugin call printed (a result, or CNI error JSON) and its exit code.
pub struct CniRun {
    pub code: i32,
    pub output: Value,
}

/// One attachment as a runtime names it: its container id, namespace and interface.
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: &str, netns: &str, ifname: &str) -> Self {
        Self {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
        }
    }

    /// Runs the plugin's `command` (`ADD`, `CHECK`, `DEL`) for this attachment, with
    /// `CNI_ARGS` `args` and config `conf`.
    pub fn call(&self, command: &str, args: &str, conf: &Value) -> CniRun {
        let names = [&self.container_id, &self.netns, &self.ifname];
        call(command, names.map(String::as_str), args, conf)
    }
}

/// Runs a command that names no attachment (`GC`, `STATUS`, `VERSION`).
pub fn call_plugin(command: &str, conf: &Value) -> CniRun {
    call(command, ["", "", ""], "", conf)
}

/// Runs the plugin: `command` for (container id, namespace, interface) `names`.
fn call(command: &str, names: [&str; 3], args: &str, conf: &Value) -> CniRun {
    let [id, netns, ifname] = names;
    let mut child = std::process::Command::new(netbpf_bin())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netbpf as a CNI plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let output = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{command}: not JSON ({e}): {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    CniRun {
        code: out.status.code().unwrap_or(-1),
        output,
    }
}

/// Network namespaces made as a runtime makes them (`/run/netns/NAME`), deleted on drop.
pub struct Sandboxes(Vec<String>);

impl Sandboxes {
    pub fn new(count: usize) -> Self {
        let names: Vec<String> = (0..count)
            .map(|i| format!("{}-sb{i}", unique_id()))
            .collect();
        for name in &names {
            must("ip", &["netns", "add", name]);
        }
        Self(names)
    }

    pub fn name(&self, i: usize) -> &str {
        &self.0[i]
    }

    pub fn path(&self, i: usize) -> String {
        format!("/run/netns/{}", self.0[i])
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
    }
}

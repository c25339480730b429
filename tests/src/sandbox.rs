//! [`ProgramSandbox`]: the daemon's real programs, loaded in a namespace of their own and
//! run on crafted packets with BPF_PROG_TEST_RUN.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::must;

/// A named namespace with veths and a bpffs of its own, for running the real programs on
/// crafted packets (BPF_PROG_TEST_RUN resolves the context's ifindex in the caller's
/// namespace, so the programs run on a thread inside it). Removed on drop.
pub struct ProgramSandbox {
    pub ns: String,
    pub bpffs: PathBuf,
    dir: PathBuf,
}

impl ProgramSandbox {
    /// Makes `veths` (each with a peer named `<name>p`) in a fresh namespace.
    pub fn new(tag: &str, veths: &[&str]) -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "integration tests must run as root"
        );
        let ns = format!("nbp{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("netbpf-test-{ns}"));
        let sandbox = Self {
            bpffs: dir.join("bpffs"),
            ns,
            dir,
        };
        std::fs::create_dir_all(&sandbox.bpffs).unwrap();
        must(
            "mount",
            &["-t", "bpf", "bpffs", sandbox.bpffs.to_str().unwrap()],
        );
        must("ip", &["netns", "add", &sandbox.ns]);
        for veth in veths {
            let peer = format!("{veth}p");
            must(
                "ip",
                &[
                    "-n",
                    &sandbox.ns,
                    "link",
                    "add",
                    veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &peer,
                ],
            );
        }
        sandbox
    }

    pub fn ifindex(&self, name: &str) -> u32 {
        let out = must("ip", &["-n", &self.ns, "-j", "link", "show", name]);
        let links: Value = serde_json::from_str(&out).unwrap();
        links[0]["ifindex"].as_u64().unwrap() as u32
    }

    /// Runs `work` on a thread inside the namespace.
    pub fn run<T: Send>(&self, work: impl FnOnce(&Path) -> T + Send) -> T {
        let ns = File::open(format!("/run/netns/{}", self.ns)).unwrap();
        let bpffs = self.bpffs.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                work(&bpffs)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for ProgramSandbox {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A `struct __sk_buff` with only `ifindex` (offset 40) set: the device a packet came in on.
pub fn skb_ctx(ifindex: u32) -> [u8; 48] {
    let mut ctx = [0u8; 48];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Runs a TC program once on `frame` as if it came in on `ifindex`; returns the verdict
/// and the frame as the program left it.
pub fn run_tc(
    program: &aya::programs::SchedClassifier,
    frame: &[u8],
    ifindex: u32,
) -> (u32, Vec<u8>) {
    use aya::TestRun as _;
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = skb_ctx(ifindex);
    let options = aya::TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    };
    let result = program
        .test_run(options)
        .unwrap_or_else(|e| panic!("test run failed: {e:?}"));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Runs an XDP program once on `frame`; returns the verdict and the resulting frame.
pub fn run_xdp(program: &aya::programs::Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    use aya::TestRun as _;
    let mut out = vec![0u8; frame.len() + 256];
    let options = aya::TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let result = program
        .test_run(options)
        .unwrap_or_else(|e| panic!("test run failed: {e:?}"));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

//! [`Dockerd`]: a real Docker daemon (Debian's `docker.io`) for one test, in the test host's
//! network namespace and a private mount namespace where the test's own plugin directory
//! is `/run/docker/plugins`, so parallel tests each find their own `netbpf` driver.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::{
    Run, TestHost,
    cluster::{Etcd, Underlay},
    must,
};

pub struct Dockerd {
    dir: PathBuf,
    plugins: PathBuf,
    host_ns: String,
    child: Child,
}

impl Dockerd {
    /// A test host whose daemon (with `daemon_args` more) serves the Docker plugin, a
    /// dockerd that finds it, and the busybox image (serving `page`) imported as `bb`.
    pub fn with_netbpf(page: &str, daemon_args: &[&str]) -> (TestHost, Dockerd) {
        let args = daemon_args.iter().map(|a| a.to_string()).collect();
        Self::on_host(TestHost::bare(), page, args)
    }

    /// [`Dockerd::with_netbpf`] for host `10.0.0.<n>` of a cluster.
    pub fn on_cluster(underlay: &Underlay, etcd: &Etcd, n: u8, page: &str) -> (TestHost, Dockerd) {
        let host = TestHost::bare();
        let args = crate::cluster::cluster_args(underlay, etcd, &host, n);
        Self::on_host(host, page, args)
    }

    fn on_host(mut host: TestHost, page: &str, daemon_args: Vec<String>) -> (TestHost, Dockerd) {
        let plugins = host.dir.join("plugins");
        let socket = plugins.join("netbpf.sock");
        let mut args = vec!["--docker-plugin", socket.to_str().unwrap()];
        args.extend(daemon_args.iter().map(String::as_str));
        host.start_daemon(&args);
        let dockerd = Dockerd::start(&host, &plugins);
        let tar = crate::image::busybox_tar(&host.dir, page);
        dockerd.ok(&["import", tar.to_str().unwrap(), "bb"]);
        (host, dockerd)
    }

    /// Starts dockerd for `host`, with `plugins` as its plugin socket directory, and waits
    /// until it answers. It touches neither iptables nor forwarding: netbpf does the work.
    pub fn start(host: &TestHost, plugins: &Path) -> Self {
        Self::start_in(host.dir.join("docker"), plugins, &host.host_ns)
    }

    /// Stops this dockerd (SIGTERM: it stops its containers, as a host's shutdown does)
    /// and starts it again on the same data.
    pub fn restart(self) -> Self {
        let (dir, plugins, host_ns) =
            (self.dir.clone(), self.plugins.clone(), self.host_ns.clone());
        drop(self);
        Self::start_in(dir, &plugins, &host_ns)
    }

    fn start_in(dir: PathBuf, plugins: &Path, host_ns: &str) -> Self {
        for sub in ["data", "exec"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // The mount point, made once on the machine; each test's dockerd sees its own dir.
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        let d = dir.display();
        let script = format!(
            "mount --bind {plugins} /run/docker/plugins && exec nsenter --net=/run/netns/{ns} \
             dockerd --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock \
             --pidfile {d}/docker.pid --iptables=false --ip-forward=false --bridge=none \
             --userland-proxy=false",
            plugins = plugins.display(),
            ns = host_ns,
        );
        let child = crate::spawn_with_private_mounts(&script, &dir.join("dockerd.log"));
        let dockerd = Self {
            dir,
            plugins: plugins.to_owned(),
            host_ns: host_ns.to_owned(),
            child,
        };
        // (Its log is printed when the test fails.)
        crate::eventually(60, "dockerd to answer", || {
            dockerd.docker(&["version"]).code == 0
        });
        dockerd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The `docker` CLI against this daemon.
    pub fn docker<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Run {
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}/docker.sock", self.dir.display()))
            .args(args)
            .output()
            .expect("docker CLI");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> String {
        let run = self.docker(args);
        assert_eq!(run.code, 0, "docker {args:?}: {}{}", run.stdout, run.stderr);
        run.stdout
    }

    pub fn fails<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> String {
        let run = self.docker(args);
        assert_ne!(run.code, 0, "docker {args:?} should fail: {}", run.stdout);
        run.stderr
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("docker.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the dockerd this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}", self.log());
        }
        let _ = must(
            "sh",
            &[
                "-c",
                &format!("umount -R {}/exec 2>/dev/null; true", self.dir.display()),
            ],
        );
    }
}

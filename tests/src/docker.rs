//! [`Dockerd`]: a real Docker daemon (Debian's `docker.io`) for one test, in the test host's
//! network namespace and a private mount namespace where the test's own plugin directory
//! is `/run/docker/plugins`, so parallel tests each find their own `netbpf` driver.

use std::{
    fs::File,
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
    /// Started with `--live-restore`: its containers outlive it, so they are removed
    /// before it is stopped for good.
    live_restore: bool,
}

impl Dockerd {
    /// A test host whose daemon (with `daemon_args` more) serves the Docker plugin, a
    /// dockerd that finds it, and the busybox image (serving `page`) imported as `bb`.
    pub fn with_netbpf(page: &str, daemon_args: &[&str]) -> (TestHost, Dockerd) {
        let args = daemon_args.iter().map(|a| a.to_string()).collect();
        Self::on_host(TestHost::bare(), page, args, false)
    }

    /// [`Dockerd::with_netbpf`] with Docker's `--live-restore`: containers keep running
    /// while dockerd is down ([`Dockerd::restart_live`]).
    pub fn with_netbpf_live_restore(page: &str) -> (TestHost, Dockerd) {
        Self::on_host(TestHost::bare(), page, vec![], true)
    }

    /// [`Dockerd::with_netbpf`] for host `10.0.0.<n>` of a cluster.
    pub fn on_cluster(underlay: &Underlay, etcd: &Etcd, n: u8, page: &str) -> (TestHost, Dockerd) {
        let host = TestHost::bare();
        let args = crate::cluster::cluster_args(underlay, etcd, &host, n);
        Self::on_host(host, page, args, false)
    }

    fn on_host(
        mut host: TestHost,
        page: &str,
        daemon_args: Vec<String>,
        live_restore: bool,
    ) -> (TestHost, Dockerd) {
        let plugins = host.dir.join("plugins");
        let socket = plugins.join("netbpf.sock");
        let mut args = vec!["--docker-plugin", socket.to_str().unwrap()];
        args.extend(daemon_args.iter().map(String::as_str));
        host.start_daemon(&args);
        let dockerd = Self::start_in(
            host.dir.join("docker"),
            &plugins,
            &host.host_ns,
            None,
            live_restore,
        );
        let tar = crate::image::busybox_tar(&host.dir, page);
        dockerd.ok(&["import", tar.to_str().unwrap(), "bb"]);
        (host, dockerd)
    }

    /// Starts dockerd for `host`, with `plugins` as its plugin socket directory, and waits
    /// until it answers. It touches neither iptables nor forwarding: netbpf does the work.
    pub fn start(host: &TestHost, plugins: &Path) -> Self {
        Self::start_in(host.dir.join("docker"), plugins, &host.host_ns, None, false)
    }

    /// Stops this dockerd (SIGTERM: it stops its containers, as a host's shutdown does)
    /// and starts it again on the same data.
    pub fn restart(self) -> Self {
        let (dir, plugins, host_ns) =
            (self.dir.clone(), self.plugins.clone(), self.host_ns.clone());
        drop(self);
        Self::start_in(dir, &plugins, &host_ns, None, false)
    }

    /// Stops this `--live-restore` dockerd (SIGTERM: its containers keep running) and
    /// starts it again in the mount namespace it ran in, where its containers' shims
    /// (`container`'s included) and their namespace mounts still are, as on a real host.
    pub fn restart_live(mut self, container: &str) -> Self {
        assert!(
            self.live_restore,
            "restart_live needs with_netbpf_live_restore"
        );
        let pid = self.ok(&["inspect", "-f", "{{.State.Pid}}", container]);
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
        // (The shim is the container's parent; field 4 of stat, after the `(comm)`.)
        let shim = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap();
        let mounts = File::open(format!("/proc/{shim}/ns/mnt")).expect("the shim's mount ns");
        // (Stopped as a plain dockerd: its containers stay.)
        self.live_restore = false;
        let (dir, plugins, host_ns) =
            (self.dir.clone(), self.plugins.clone(), self.host_ns.clone());
        drop(self);
        Self::start_in(dir, &plugins, &host_ns, Some(mounts), true)
    }

    /// `mounts`: the mount namespace to run in (it has the plugin dir already); a new
    /// private one if `None`.
    fn start_in(
        dir: PathBuf,
        plugins: &Path,
        host_ns: &str,
        mounts: Option<File>,
        live_restore: bool,
    ) -> Self {
        for sub in ["data", "exec"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // The mount point, made once on the machine; each test's dockerd sees its own dir.
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        let d = dir.display();
        let dockerd_command = format!(
            "nsenter --net=/run/netns/{host_ns} \
             dockerd --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock \
             --pidfile {d}/docker.pid --iptables=false --ip-forward=false --bridge=none \
             --userland-proxy=false{live}",
            live = if live_restore { " --live-restore" } else { "" },
        );
        let log = dir.join("dockerd.log");
        let child = match mounts {
            None => crate::spawn_with_private_mounts(
                &format!(
                    "mount --bind {} /run/docker/plugins && exec {dockerd_command}",
                    plugins.display()
                ),
                &log,
            ),
            Some(mounts) => crate::spawn_in_mounts(mounts, &dockerd_command, &log),
        };
        let dockerd = Self {
            dir,
            plugins: plugins.to_owned(),
            host_ns: host_ns.to_owned(),
            child,
            live_restore,
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

impl Dockerd {
    /// SIGTERM, and SIGKILL after 15 s.
    fn stop(&mut self) {
        if self.live_restore {
            // Its containers would outlive it (and the test).
            let ids = self.docker(&["ps", "-aq"]).stdout;
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
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
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
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

//! [`RequestLoop`]: a client outside requesting a URL over and over while a test restarts
//! something underneath, counting what failed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::TestHost;
use crate::succeeds;

/// Requests running in the background (see [`TestHost::requests_from_outside`]).
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u32, u32)>,
}

impl RequestLoop {
    /// Stops the loop; how many requests failed, of how many sent.
    pub fn stop(self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("request loop")
    }
}

impl TestHost {
    /// `curl URL` from the outside namespace every `every`, each allowed 2 s, until
    /// [`RequestLoop::stop`].
    pub fn requests_from_outside(&self, url: &str, every: Duration) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let (outside, url) = (self.outside_ns.clone(), url.to_owned());
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut failed, mut sent) = (0, 0);
            while !stopped.load(Ordering::Relaxed) {
                let mut curl = std::process::Command::new("ip");
                curl.args(["netns", "exec", &outside, "curl", "-sf", "--max-time", "2"])
                    .arg(&url);
                sent += 1;
                failed += u32::from(!succeeds(curl));
                std::thread::sleep(every);
            }
            (failed, sent)
        });
        RequestLoop { stop, thread }
    }
}

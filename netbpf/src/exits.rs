//! Container processes ending: a thread per process waits for it and reports on one
//! channel (the daemon hands each report to the controller), and a watch per running
//! container tells `wait`, `stop` and `logs -f` when it ended. This service has a lock of its
//! own, so those callers wait on a watch and never hold, or poll, the controller's lock.

use std::{
    collections::{BTreeMap, VecDeque},
    process::Child,
    sync::Mutex,
};

use tokio::sync::{mpsc, watch};

use crate::{container, lock::lock};

/// A container's process ended. `code` is `None` when it was not our child (after a
/// restart, or attached) and so its status cannot be known.
#[derive(Debug)]
pub struct ExitEvent {
    pub id: String,
    pub pid: i32,
    pub code: Option<i32>,
}

/// The exit status a watch carries once the process ended: `Some(code)`, where the code is
/// itself `None` when it cannot be known.
pub type ExitWatch = watch::Receiver<Option<Option<i32>>>;

/// What `wait` finds: an exit status now, or a watch that will carry it.
pub enum WaitFor {
    Exited(Option<i32>),
    Running(ExitWatch),
}

impl WaitFor {
    /// The exit status, once there is one.
    pub async fn code(self) -> Option<i32> {
        match self {
            WaitFor::Exited(code) => code,
            WaitFor::Running(mut rx) => loop {
                if let Some(code) = *rx.borrow_and_update() {
                    return code;
                }
                if rx.changed().await.is_err() {
                    return rx.borrow().flatten();
                }
            },
        }
    }
}

/// How many exit statuses of auto-removed containers to remember for late `wait` calls.
const FINISHED_KEPT: usize = 256;

pub struct Exits {
    /// Where watcher threads report; the daemon feeds the reports to `Controller::on_exit`.
    events: mpsc::UnboundedSender<ExitEvent>,
    watches: Mutex<Watches>,
}

#[derive(Default)]
struct Watches {
    /// Per running container id: `None` until it exits, then `Some(exit code)`.
    running: BTreeMap<String, watch::Sender<Option<Option<i32>>>>,
    /// Exit codes of auto-removed containers, by id, for `wait` calls that come late.
    finished: VecDeque<(String, Option<i32>)>,
}

impl Exits {
    pub fn new(events: mpsc::UnboundedSender<ExitEvent>) -> Self {
        Self {
            events,
            watches: Mutex::default(),
        }
    }

    /// Watches a process the daemon started: a thread reaps it and reports its status.
    pub fn watch_child(&self, id: &str, mut child: Child) {
        let pid = child.id() as i32;
        self.report_when(id, pid, move || child.wait().ok().map(container::exit_code));
    }

    /// Watches a process that is not our child, reporting its exit like a child's.
    pub fn watch_foreign(&self, id: &str, pid: i32) {
        self.report_when(id, pid, move || {
            if let Err(error) = container::wait_foreign(pid) {
                tracing::warn!(%error, pid, "cannot watch process; treating it as exited");
            }
            None
        });
    }

    fn report_when(&self, id: &str, pid: i32, wait: impl FnOnce() -> Option<i32> + Send + 'static) {
        lock(&self.watches)
            .running
            .insert(id.to_owned(), watch::channel(None).0);
        let events = self.events.clone();
        let id = id.to_owned();
        std::thread::spawn(move || {
            let code = wait();
            let _ = events.send(ExitEvent { id, pid, code });
        });
    }

    /// The container's process ended: wake its waiters, and remember the status of an
    /// auto-removed container, whose record goes away.
    pub fn exited(&self, id: &str, code: Option<i32>, auto_removed: bool) {
        let mut watches = lock(&self.watches);
        if let Some(watch) = watches.running.remove(id) {
            let _ = watch.send(Some(code));
        }
        if auto_removed {
            watches.finished.push_back((id.to_owned(), code));
            if watches.finished.len() > FINISHED_KEPT {
                watches.finished.pop_front();
            }
        }
    }

    /// Stops tracking a container (removed, or its start was undone).
    pub fn forget(&self, id: &str) {
        lock(&self.watches).running.remove(id);
    }

    /// The watch of a running container.
    pub fn subscribe(&self, id: &str) -> Option<ExitWatch> {
        lock(&self.watches)
            .running
            .get(id)
            .map(watch::Sender::subscribe)
    }

    /// The exit status of an auto-removed container, if it was one.
    pub fn finished(&self, id: &str) -> Option<Option<i32>> {
        lock(&self.watches)
            .finished
            .iter()
            .find(|(finished, _)| finished == id)
            .map(|(_, code)| *code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_carries_the_exit_and_auto_removed_ones_are_remembered() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let exits = Exits::new(tx);
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        exits.watch_child("c1", child);
        let wait = WaitFor::Running(exits.subscribe("c1").unwrap());
        let event = rx.recv().await.unwrap();
        assert_eq!((event.id.as_str(), event.code), ("c1", Some(3)));
        exits.exited(&event.id, event.code, true);
        assert_eq!(wait.code().await, Some(3));
        assert!(exits.subscribe("c1").is_none());
        assert_eq!(exits.finished("c1"), Some(Some(3)));
        assert_eq!(exits.finished("c2"), None);
    }
}

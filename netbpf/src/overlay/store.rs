//! The daemon's session with the cluster store: a lease it keeps alive, the blocks it holds
//! under that lease, a watch that keeps its view of every host current, and the changes the
//! controller asks for. A session runs on one member of the store's cluster; when it fails,
//! the next member is tried at once, and the lease is taken up again while etcd still has
//! it (by the next daemon too), so the other hosts see nothing. When no member can be
//! reached, the last view stays in force (traffic between existing containers does not
//! depend on etcd), changes are refused with a clear error, and a new round is tried every
//! two seconds with a log line until etcd is back.
//!
//! Nothing here can freeze the daemon: every call has a deadline, HTTP/2 keep-alive finds a
//! silently partitioned etcd within seconds, the controller asks without holding its lock
//! and gives up after [`ASK_DEADLINE`], and keys that do not parse count as taken.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use etcd_client::{Client, WatchOptions};
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    ClusterView, LEASE_TTL_SECS, NameRecord, OverlaySpec,
    access::StoreAccess,
    records::{create, publish, remove, sync},
};

const RETRY: Duration = Duration::from_secs(2);

/// How long a change (define, remove a network) waits for the store before it fails.
pub const ASK_DEADLINE: Duration = Duration::from_secs(5);

/// Every single etcd call's deadline (the session ends if one passes).
const CALL_DEADLINE: Duration = Duration::from_secs(3);

/// HTTP/2 pings on the connection: a partitioned etcd is found within interval + timeout.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(3));

/// Who this host is in the cluster.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host: String,
    pub vtep: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("network with name {0} already exists in the cluster store")]
    Exists(String),
    #[error("cluster store {0} is unreachable: the change was not made, try again")]
    Unreachable(String),
    #[error("cluster store: {0}")]
    Failed(String),
    #[error("the cluster store did not answer in time: the change may or may not be made")]
    Timeout,
}

enum Request {
    Create(OverlaySpec, oneshot::Sender<Result<(), StoreError>>),
    Remove(String, oneshot::Sender<Result<(), StoreError>>),
    /// This host's container names now (the whole set).
    Names(Vec<NameRecord>),
    /// This host leaves the cluster (a full shutdown): its lease goes, and with it its
    /// blocks and names; the session ends.
    Leave(oneshot::Sender<()>),
}

/// How the session with the store stands (`netbpf info`).
#[derive(Debug, Clone)]
pub struct SessionStatus {
    /// A session is up: a lease kept alive and the watch running.
    pub connected: bool,
    /// Since when (RFC 3339).
    pub since: String,
    /// Why the last session ended or could not start, and what may be missing.
    pub error: Option<String>,
    pub hint: Option<&'static str>,
    /// The lease this host's keys live under (as `etcdctl lease list` shows it, in hex).
    pub lease: Option<i64>,
    /// The member of the store's cluster the session runs on.
    pub member: Option<String>,
}

impl SessionStatus {
    /// A session ended or could not start (a store that stays away keeps the time it
    /// went).
    fn failed(&mut self, error: String, hint: Option<&'static str>, lease: Option<i64>) {
        let since = (!self.connected).then(|| self.since.clone());
        *self = Self {
            lease,
            ..Self::now(false, Some(error), hint)
        };
        if let Some(since) = since {
            self.since = since;
        }
    }

    fn now(connected: bool, error: Option<String>, hint: Option<&'static str>) -> Self {
        Self {
            connected,
            since: crate::state::now_rfc3339(),
            error,
            hint,
            lease: None,
            member: None,
        }
    }
}

/// What `netbpf info` says about the store.
#[derive(Debug, Clone)]
pub struct StoreFacts {
    pub url: String,
    pub tls: bool,
    pub user: Option<String>,
    pub vtep: Ipv4Addr,
    pub status: SessionStatus,
}

/// The controller's handle on the session task.
#[derive(Clone)]
pub struct Cluster {
    requests: mpsc::UnboundedSender<Request>,
    /// The store's URL, as given (`etcd://…`, `etcds://…`).
    pub url: String,
    /// Whether the store is reached over TLS, and as which etcd user.
    pub tls: bool,
    pub user: Option<String>,
    /// This host's tunnel endpoint: the blocks registered with it are this host's.
    pub vtep: Ipv4Addr,
    status: watch::Receiver<SessionStatus>,
}

impl Cluster {
    /// Starts the session task (on the current tokio runtime). Every new view of the store
    /// goes to `views`, in order. `held` are the blocks this host's networks have (from its
    /// state): it asks for those again, never for others of the same networks.
    pub fn start(
        access: StoreAccess,
        me: Identity,
        views: mpsc::UnboundedSender<ClusterView>,
        held: BTreeMap<String, Ipv4Net>,
        lease_file: PathBuf,
    ) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(SessionStatus::now(false, None, None));
        let cluster = Self {
            requests,
            url: access.url.clone(),
            tls: access.is_tls(),
            user: access.user().map(str::to_owned),
            vtep: me.vtep,
            status,
        };
        tokio::spawn(run(access, me, views, rx, held, lease_file, status_tx));
        cluster
    }

    /// Where the store is, how it is reached and how the session stands now.
    pub fn facts(&self) -> StoreFacts {
        StoreFacts {
            url: self.url.clone(),
            tls: self.tls,
            user: self.user.clone(),
            vtep: self.vtep,
            status: self.status.borrow().clone(),
        }
    }

    /// Hands a change to the session and waits for it, [`ASK_DEADLINE`] at most (a change
    /// still queued then is dropped by the session, which sees no one waits for it).
    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> Request,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Unreachable(self.url.clone());
        self.requests.send(make(tx)).map_err(|_| gone())?;
        match tokio::time::timeout(ASK_DEADLINE, rx).await {
            Ok(answer) => answer.map_err(|_| gone())?,
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Defines a network in the store, unless one of that name exists there.
    pub async fn create_network(&self, spec: OverlaySpec) -> Result<(), StoreError> {
        self.ask(|tx| Request::Create(spec, tx)).await
    }

    /// Publishes this host's container names on overlay networks (replacing the last set);
    /// kept, and published again after an outage, until the next call.
    pub fn publish_names(&self, names: Vec<NameRecord>) {
        let _ = self.requests.send(Request::Names(names));
    }

    /// Leaves the cluster at once (revokes the lease: the other hosts drop this host's
    /// blocks and names now rather than when the lease would expire); best effort, within
    /// [`ASK_DEADLINE`].
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(ASK_DEADLINE, rx).await;
        }
    }

    /// Deletes a network's definition and every host's block of it.
    pub async fn remove_network(&self, name: &str) -> Result<(), StoreError> {
        self.ask(|tx| Request::Remove(name.to_owned(), tx)).await
    }
}

async fn run(
    access: StoreAccess,
    me: Identity,
    views: mpsc::UnboundedSender<ClusterView>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    held: BTreeMap<String, Ipv4Net>,
    lease_file: PathBuf,
    status: watch::Sender<SessionStatus>,
) {
    let mut kept = Kept {
        held,
        names: vec![],
        lease: std::fs::read_to_string(&lease_file)
            .ok()
            .and_then(|text| text.trim().parse().ok()),
        lease_file,
    };
    // One member at a time, the next one when a session fails, as etcd's own client does
    // (etcd-client's balanced channel fails every call while one member is down); the
    // 2 s pause comes only after every member failed in a row.
    let members = access.endpoints.len();
    let (mut member, mut failed_in_a_row) = (0, 0);
    loop {
        let endpoint = &access.endpoints[member];
        let connected = |lease| {
            status.send_replace(SessionStatus {
                lease: Some(lease),
                member: Some(endpoint.clone()),
                ..SessionStatus::now(true, None, None)
            });
        };
        let result = session(
            &access,
            endpoint,
            &me,
            &views,
            &mut requests,
            &mut kept,
            connected,
        );
        let Err(error) = result.await else { return };
        let error = format!("{error:#}");
        let hint = access.hint(&error);
        failed_in_a_row = if status.borrow().connected {
            1
        } else {
            failed_in_a_row + 1
        };
        member = (member + 1) % members;
        tracing::warn!(
            store = access.url,
            member = endpoint,
            hint,
            error,
            "cluster store unreachable or session lost: overlay changes wait; retrying"
        );
        status.send_modify(|now| now.failed(error, hint, kept.lease));
        if failed_in_a_row < members {
            // (Changes asked for meanwhile wait for the next member's session.)
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if let Served::Left(reply) =
            refuse_changes_for(RETRY, &mut requests, &mut kept.names, &access.url).await
        {
            // (The lease expires by itself: etcd cannot be told.)
            kept.left(reply);
            return;
        }
    }
}

/// While no member answers: for `pause`, changes are refused at once (names are kept for
/// the next session).
async fn refuse_changes_for(
    pause: Duration,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    names: &mut Vec<NameRecord>,
    url: &str,
) -> Served {
    let deadline = tokio::time::Instant::now() + pause;
    while let Ok(Some(request)) = tokio::time::timeout_at(deadline, requests.recv()).await {
        match request {
            Request::Create(_, reply) | Request::Remove(_, reply) => {
                let _ = reply.send(Err(StoreError::Unreachable(url.to_owned())));
            }
            Request::Names(wanted) => *names = wanted,
            Request::Leave(reply) => return Served::Left(reply),
        }
    }
    Served::Done
}

/// What outlives one session with the store.
struct Kept {
    /// The blocks this host holds, kept across sessions (and, through the state, restarts)
    /// so that it asks for the same ones again and its containers keep their addresses.
    held: BTreeMap<String, Ipv4Net>,
    /// The names this host wants published; written again at each new session.
    names: Vec<NameRecord>,
    /// The lease its keys live under. A new session (another member of the store's
    /// cluster, a short outage) takes it up again while etcd still has it, so that its
    /// blocks and names never vanish from the other hosts' views. Kept in `lease_file`
    /// too, for the next daemon (a `--live-restore` upgrade changes nothing for the others).
    lease: Option<i64>,
    lease_file: PathBuf,
}

impl Kept {
    /// The host left the cluster: no lease for the next daemon, and the leaver hears
    /// back only then.
    fn left(&mut self, reply: oneshot::Sender<()>) {
        self.lease = None;
        let _ = std::fs::remove_file(&self.lease_file);
        let _ = reply.send(());
    }

    fn set_lease(&mut self, lease: i64) {
        if self.lease == Some(lease) {
            return;
        }
        self.lease = Some(lease);
        let tmp = self.lease_file.with_extension("tmp");
        let written = std::fs::write(&tmp, format!("{lease}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.lease_file));
        if let Err(error) = written {
            tracing::warn!(%error, file = %self.lease_file.display(), "cannot keep the lease id for the next daemon");
        }
    }
}

/// The lease of the last session if etcd still has it, else a new one.
async fn lease_for(client: &mut Client, last: Option<i64>) -> anyhow::Result<i64> {
    if let Some(lease) = last
        && let Ok(alive) = client.lease_time_to_live(lease, None).await
        && alive.ttl() > 0
    {
        return Ok(lease);
    }
    Ok(client.lease_grant(LEASE_TTL_SECS, None).await?.id())
}

async fn session(
    access: &StoreAccess,
    endpoint: &str,
    me: &Identity,
    views: &mpsc::UnboundedSender<ClusterView>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    kept: &mut Kept,
    connected: impl FnOnce(i64),
) -> anyhow::Result<()> {
    // (The certificates, key and password as their files are now: renewed ones are used.)
    let options = access
        .connect_options()
        .map_err(anyhow::Error::msg)?
        .with_connect_timeout(RETRY)
        .with_timeout(CALL_DEADLINE)
        .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
        .with_keep_alive_while_idle(true);
    let mut client = Client::connect([endpoint], Some(options)).await?;
    let lease = lease_for(&mut client, kept.lease).await?;
    let resumed = kept.lease == Some(lease);
    kept.set_lease(lease);
    let Kept { held, names, .. } = kept;
    let (mut keeper, mut keep_alive) = deadline(client.lease_keep_alive(lease)).await??;
    tracing::info!(store = access.url, member = endpoint, lease, resumed, vtep = %me.vtep, "cluster store session started");
    connected(lease);
    publish(&mut client, lease, &[], names).await?;
    let mut warned = BTreeSet::new();
    let mut revision = sync(&mut client, me, lease, held, views, &mut warned).await?;
    let mut watch = client
        .watch(
            "/netbpf/v1/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_secs(LEASE_TTL_SECS as u64 / 3));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                deadline(keeper.keep_alive()).await??;
                match deadline(keep_alive.message()).await?? {
                    Some(answer) if answer.ttl() > 0 => {}
                    _ => bail!("lease {lease} expired"),
                }
            }
            message = watch.message() => {
                let message = message?.context("the watch ended")?;
                if message.events().iter().any(|e| e.kv().is_some_and(|kv| kv.mod_revision() > revision)) {
                    revision = sync(&mut client, me, lease, held, views, &mut warned).await?;
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { return Ok(()) };
                if let Served::Left(reply) = serve(&mut client, lease, names, request).await? {
                    kept.left(reply);
                    return Ok(());
                }
            }
        }
    }
}

/// What came of the changes asked for.
enum Served {
    Done,
    /// The host leaves the cluster; the leaver waits on this for the session's end.
    Left(oneshot::Sender<()>),
}

/// One change the controller asked for, in a session under `lease`.
async fn serve(
    client: &mut Client,
    lease: i64,
    names: &mut Vec<NameRecord>,
    request: Request,
) -> anyhow::Result<Served> {
    match request {
        // (No one waits any more: the asker's deadline passed.)
        Request::Create(_, reply) | Request::Remove(_, reply) if reply.is_closed() => {}
        Request::Create(spec, reply) => {
            let _ = reply.send(create(client, &spec).await);
        }
        Request::Remove(name, reply) => {
            let _ = reply.send(remove(client, &name).await);
        }
        Request::Names(wanted) => {
            publish(client, lease, names, &wanted).await?;
            *names = wanted;
        }
        Request::Leave(reply) => {
            if let Err(error) = deadline(client.lease_revoke(lease)).await {
                tracing::warn!(%error, lease, "cannot revoke the lease: this host's blocks go when it expires");
            }
            tracing::info!(
                lease,
                "left the cluster: this host's blocks and names are gone"
            );
            return Ok(Served::Left(reply));
        }
    }
    Ok(Served::Done)
}

/// `call` within [`CALL_DEADLINE`] (for what etcd-client's own request timeout does not
/// cover: streams).
async fn deadline<T>(call: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(CALL_DEADLINE, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CALL_DEADLINE:?}"))
}

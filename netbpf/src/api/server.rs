//! The API server: axum routes over a Unix socket. Handlers translate HTTP into controller
//! calls (request bodies into typed specs, errors into status codes) and answers into views;
//! controller calls block (netlink, fork, map syscalls) and run on tokio's blocking pool
//! under the controller's lock. Waiting for a container to stop never holds that lock.

use std::time::Duration;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use super::{
    ApiError, AttachRequest, ConnectRequest, ContainerCreate, ContainerView, DisconnectRequest,
    ExecRequest, ExecResponse, NetworkCreate, NetworkView, WaitResponse, views,
};
use crate::{
    container,
    controller::{Controller, Shared},
    exits::WaitFor,
};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({ "message": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Runs `op` with the controller locked, off the async threads.
pub(super) async fn with<T: Send + 'static>(
    ctl: &Shared,
    op: impl FnOnce(&mut Controller) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    ctl.run(op).await.map_err(ApiError::internal)?
}

fn network_view(c: &Controller, key: &str) -> Result<NetworkView, ApiError> {
    views::network_inspect(c.state(), c.overlay().view(), key)
        .ok_or_else(|| ApiError::not_found(format!("network {key} not found")))
}

fn container_view(c: &Controller, key: &str) -> Result<ContainerView, ApiError> {
    let record = c
        .state()
        .container(key)
        .ok_or_else(|| ApiError::not_found(format!("no such container: {key}")))?;
    let sandbox = c.netns_path_of(record).map(|p| p.display().to_string());
    Ok(views::container(record, c.state(), sandbox, |i| {
        c.counters(i)
    }))
}

/// The API, for the peers `access` allows (serve it with `Peer` connect info).
pub fn router(ctl: Shared, access: super::peer::Access) -> Router {
    Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route("/info", get(info))
        .route("/networks", get(network_list).post(network_create))
        .route("/networks/prune", post(network_prune))
        .route(
            "/networks/{name}",
            get(network_inspect).delete(network_remove),
        )
        .route("/networks/{name}/connect", post(network_connect))
        .route("/networks/{name}/disconnect", post(network_disconnect))
        .route("/containers", get(container_list).post(container_create))
        .route("/containers/attach", post(container_attach))
        .route(
            "/containers/{name}",
            get(container_inspect).delete(container_remove),
        )
        .route("/containers/{name}/start", post(container_start))
        .route("/containers/{name}/stop", post(container_stop))
        .route("/containers/{name}/exec", post(container_exec))
        .route("/containers/{name}/wait", post(container_wait))
        .route("/containers/{name}/logs", get(container_logs))
        .route("/containers/{name}/port", get(container_port))
        .route("/stats", get(stats))
        .merge(super::cni::routes())
        .with_state(ctl)
        .layer(axum::middleware::from_fn_with_state(
            access,
            super::peer::check,
        ))
}

async fn info(State(ctl): State<Shared>) -> ApiResult<super::DaemonInfo> {
    with(&ctl, |c| {
        let config = c.config();
        Ok(views::info(views::DaemonFacts {
            state_dir: config.state_dir.display().to_string(),
            bpffs: config.bpffs.display().to_string(),
            uplink: config.uplink.clone(),
            cgroup: config.cgroup.display().to_string(),
            nat_mode: c.nat_mode(),
            xdp_redirects: c.xdp_redirects(),
            tracked_flows: c.tracked_flows(),
            ids: c.datapath_ids(),
            unreconciled: c.unreconciled().to_vec(),
            cluster_store: c.cluster().map(|store| store.facts()),
        }))
    })
    .await
    .map(Json)
}

async fn network_list(State(ctl): State<Shared>) -> ApiResult<Vec<NetworkView>> {
    with(&ctl, |c| {
        Ok(views::network_list(c.state(), c.overlay().view()))
    })
    .await
    .map(Json)
}

async fn network_create(
    State(ctl): State<Shared>,
    Json(req): Json<NetworkCreate>,
) -> Result<(StatusCode, Json<NetworkView>), ApiError> {
    let spec = req.try_into()?;
    let name = ctl.network_create(spec).await?;
    with(&ctl, move |c| network_view(c, &name))
        .await
        .map(|v| (StatusCode::CREATED, Json(v)))
}

async fn network_inspect(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<NetworkView> {
    with(&ctl, move |c| network_view(c, &name)).await.map(Json)
}

async fn network_remove(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctl.network_remove(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn network_prune(State(ctl): State<Shared>) -> ApiResult<Vec<String>> {
    with(&ctl, |c| Ok(c.network_prune()?)).await.map(Json)
}

async fn network_connect(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<ConnectRequest>,
) -> Result<StatusCode, ApiError> {
    let spec = req.try_into()?;
    with(&ctl, move |c| Ok(c.network_connect(&name, spec)?))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

async fn network_disconnect(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<DisconnectRequest>,
) -> Result<StatusCode, ApiError> {
    with(&ctl, move |c| {
        Ok(c.network_disconnect(&name, &req.container)?)
    })
    .await
    .map(|()| StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn container_list(
    State(ctl): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Vec<super::ContainerSummary>> {
    with(&ctl, move |c| Ok(views::container_list(c.state(), q.all)))
        .await
        .map(Json)
}

async fn container_create(
    State(ctl): State<Shared>,
    Json(req): Json<ContainerCreate>,
) -> Result<(StatusCode, Json<ContainerView>), ApiError> {
    let spec = req.try_into()?;
    with(&ctl, move |c| {
        let name = c.container_create(spec)?;
        container_view(c, &name)
    })
    .await
    .map(|v| (StatusCode::CREATED, Json(v)))
}

async fn container_attach(
    State(ctl): State<Shared>,
    Json(req): Json<AttachRequest>,
) -> Result<(StatusCode, Json<ContainerView>), ApiError> {
    let spec = req.try_into()?;
    with(&ctl, move |c| {
        let name = c.attach(spec)?;
        container_view(c, &name)
    })
    .await
    .map(|v| (StatusCode::CREATED, Json(v)))
}

async fn container_inspect(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<ContainerView> {
    with(&ctl, move |c| container_view(c, &name))
        .await
        .map(Json)
}

async fn container_start(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<ContainerView> {
    with(&ctl, move |c| {
        let name = c.container_start(&name)?;
        container_view(c, &name)
    })
    .await
    .map(Json)
}

#[derive(Deserialize)]
struct StopQuery {
    timeout: Option<u64>,
}

/// SIGTERM, then SIGKILL after the timeout, like `docker stop`. The lock is not held while
/// waiting: the exit is noticed by the watcher thread and handled by `on_exit`.
async fn stop(ctl: &Shared, name: String, timeout: Duration) -> Result<(), ApiError> {
    let n = name.clone();
    let Some(wait) = with(ctl, move |c| Ok(c.container_signal(&n, libc::SIGTERM)?)).await? else {
        return Ok(());
    };
    if tokio::time::timeout(timeout, wait.code()).await.is_ok() {
        return Ok(());
    }
    if let Some(wait) = with(ctl, move |c| Ok(c.container_signal(&name, libc::SIGKILL)?)).await? {
        wait.code().await;
    }
    Ok(())
}

async fn container_stop(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<StatusCode, ApiError> {
    stop(&ctl, name, Duration::from_secs(q.timeout.unwrap_or(10))).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn container_remove(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    if q.force {
        let n = name.clone();
        let attached = with(&ctl, move |c| {
            c.state()
                .container(&n)
                .map(|r| r.attached.is_some())
                .ok_or_else(|| ApiError::not_found(format!("no such container: {n}")))
        })
        .await?;
        if !attached {
            stop(&ctl, name.clone(), Duration::ZERO).await?;
        }
    }
    with(&ctl, move |c| Ok(c.container_remove(&name)?))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

async fn container_exec(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<ExecRequest>,
) -> ApiResult<ExecResponse> {
    if req.cmd.is_empty() {
        return Err(ApiError::bad_request(
            "no command given: netbpf exec NAME -- CMD [ARGS...]",
        ));
    }
    let (netns, pid, netns_dir) = with(&ctl, move |c| {
        let (netns, pid) = c.exec_target(&name)?;
        Ok((netns, pid, c.config().netns_dir()))
    })
    .await?;
    // Not under the lock: the command may run for a long time (iperf3, sleep).
    let output = tokio::task::spawn_blocking(move || {
        container::exec(&req.cmd, netns.as_deref(), pid, &netns_dir)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::bad_request(format!("exec failed: {e}")))?;
    Ok(Json(ExecResponse {
        exit_code: output.exit_code,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }))
}

async fn container_wait(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<WaitResponse> {
    let wait: WaitFor = with(&ctl, move |c| Ok(c.wait(&name)?)).await?;
    Ok(Json(WaitResponse {
        exit_code: wait.code().await,
    }))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// How often a followed log is read again at its end: a file has no change notification
/// short of inotify, and the container's exit ends the wait at once anyway.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(50);

/// The log file as a byte stream; with `follow`, it keeps tailing until the container stops.
async fn container_logs(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let (path, watch) = with(&ctl, move |c| Ok(c.log_of(&name)?)).await?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => Some(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ApiError::internal(e)),
    };
    let stream = futures::stream::unfold((file, watch, false), move |(file, mut watch, done)| {
        async move {
            let mut file = file?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut stopped = done;
            loop {
                match file.read(&mut buf).await {
                    Ok(0) if stopped || !q.follow => return None,
                    Ok(0) => {
                        // At the end of what was written so far: read once more after the
                        // container stops, then end.
                        stopped = match watch.as_mut() {
                            None => true,
                            Some(w) if w.borrow().is_some() => true,
                            // A watch dropped without a status: the record went away.
                            Some(w) => matches!(
                                tokio::time::timeout(FOLLOW_INTERVAL, w.changed()).await,
                                Ok(Err(_))
                            ),
                        };
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        return Some((Ok::<_, std::io::Error>(buf), (Some(file), watch, stopped)));
                    }
                    Err(e) => return Some((Err(e), (None, watch, true))),
                }
            }
        }
    });
    Ok(Body::from_stream(stream).into_response())
}

async fn container_port(
    State(ctl): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<Vec<String>> {
    with(&ctl, move |c| {
        let record = c
            .state()
            .container(&name)
            .ok_or_else(|| ApiError::not_found(format!("no such container: {name}")))?;
        Ok(record.published.iter().map(|p| p.to_string()).collect())
    })
    .await
    .map(Json)
}

async fn stats(State(ctl): State<Shared>) -> ApiResult<super::StatsView> {
    with(&ctl, |c| {
        Ok(views::stats(c.state(), |i| c.counters(i), &c.drops()))
    })
    .await
    .map(Json)
}

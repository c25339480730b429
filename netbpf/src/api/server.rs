//! The API server: axum routes over a Unix socket. Handlers only translate HTTP to
//! controller calls; controller calls are blocking (netlink, fork, map syscalls) and run on
//! tokio's blocking pool under the controller's lock.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

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
    ApiError, AttachRequest, ConnectRequest, ContainerCreate, DisconnectRequest, ExecRequest,
    ExecResponse, NetworkCreate, WaitResponse,
};
use crate::{
    container,
    controller::{Controller, WaitFor},
};

pub type SharedController = Arc<Mutex<Controller>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({ "message": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Runs `op` with the controller locked, off the async threads.
async fn with<T: Send + 'static>(
    ctl: &SharedController,
    op: impl FnOnce(&mut Controller) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let ctl = ctl.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = ctl.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        op(&mut guard)
    })
    .await
    .map_err(ApiError::internal)?
}

pub fn router(ctl: SharedController) -> Router {
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
        .with_state(ctl)
}

async fn info(State(ctl): State<SharedController>) -> ApiResult<super::DaemonInfo> {
    with(&ctl, |c| Ok(c.info())).await.map(Json)
}

async fn network_list(State(ctl): State<SharedController>) -> ApiResult<Vec<super::NetworkView>> {
    with(&ctl, |c| Ok(c.network_list())).await.map(Json)
}

async fn network_create(
    State(ctl): State<SharedController>,
    Json(req): Json<NetworkCreate>,
) -> Result<(StatusCode, Json<super::NetworkView>), ApiError> {
    with(&ctl, move |c| c.network_create(req))
        .await
        .map(|v| (StatusCode::CREATED, Json(v)))
}

async fn network_inspect(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
) -> ApiResult<super::NetworkView> {
    with(&ctl, move |c| c.network_inspect(&name))
        .await
        .map(Json)
}

async fn network_remove(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    with(&ctl, move |c| c.network_remove(&name))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

async fn network_prune(State(ctl): State<SharedController>) -> ApiResult<Vec<String>> {
    with(&ctl, |c| c.network_prune()).await.map(Json)
}

async fn network_connect(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
    Json(req): Json<ConnectRequest>,
) -> Result<StatusCode, ApiError> {
    with(&ctl, move |c| c.network_connect(&name, req))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

async fn network_disconnect(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
    Json(req): Json<DisconnectRequest>,
) -> Result<StatusCode, ApiError> {
    with(&ctl, move |c| c.network_disconnect(&name, req))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn container_list(
    State(ctl): State<SharedController>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Vec<super::ContainerSummary>> {
    with(&ctl, move |c| Ok(c.container_list(q.all)))
        .await
        .map(Json)
}

async fn container_create(
    State(ctl): State<SharedController>,
    Json(req): Json<ContainerCreate>,
) -> Result<(StatusCode, Json<super::ContainerView>), ApiError> {
    with(&ctl, move |c| c.container_create(req))
        .await
        .map(|v| (StatusCode::CREATED, Json(v)))
}

async fn container_attach(
    State(ctl): State<SharedController>,
    Json(req): Json<AttachRequest>,
) -> Result<(StatusCode, Json<super::ContainerView>), ApiError> {
    with(&ctl, move |c| c.attach(req))
        .await
        .map(|v| (StatusCode::CREATED, Json(v)))
}

async fn container_inspect(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
) -> ApiResult<super::ContainerView> {
    with(&ctl, move |c| c.container_inspect(&name))
        .await
        .map(Json)
}

async fn container_start(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
) -> ApiResult<super::ContainerView> {
    with(&ctl, move |c| c.container_start(&name))
        .await
        .map(Json)
}

#[derive(Deserialize)]
struct StopQuery {
    timeout: Option<u64>,
}

/// SIGTERM, then SIGKILL after the timeout, like `docker stop`. The lock is not held while
/// waiting: the exit is noticed by the watcher thread and handled by `on_exit`.
async fn stop(ctl: &SharedController, name: String, timeout: Duration) -> Result<(), ApiError> {
    let n = name.clone();
    let Some(wait) = with(ctl, move |c| c.container_signal(&n, libc::SIGTERM)).await? else {
        return Ok(());
    };
    if tokio::time::timeout(timeout, exit_code(wait)).await.is_ok() {
        return Ok(());
    }
    if let Some(wait) = with(ctl, move |c| c.container_signal(&name, libc::SIGKILL)).await? {
        exit_code(wait).await;
    }
    Ok(())
}

async fn container_stop(
    State(ctl): State<SharedController>,
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
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    if q.force {
        let n = name.clone();
        let attached = with(&ctl, move |c| Ok(c.container_inspect(&n)?.state.attached)).await?;
        if attached.is_none() {
            stop(&ctl, name.clone(), Duration::ZERO).await?;
        }
    }
    with(&ctl, move |c| c.container_remove(&name))
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

async fn container_exec(
    State(ctl): State<SharedController>,
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
        Ok((netns, pid, c.netns_dir()))
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

async fn exit_code(wait: WaitFor) -> Option<i32> {
    match wait {
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

async fn container_wait(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
) -> ApiResult<WaitResponse> {
    let wait = with(&ctl, move |c| c.wait(&name)).await?;
    Ok(Json(WaitResponse {
        exit_code: exit_code(wait).await,
    }))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The log file as a byte stream; with `follow`, it keeps tailing until the container stops.
async fn container_logs(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let (path, id) = with(&ctl, move |c| c.log_of(&name)).await?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => Some(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ApiError::internal(e)),
    };
    let stream = futures::stream::unfold((file, false), move |(file, done)| {
        let ctl = ctl.clone();
        let id = id.clone();
        async move {
            let mut file = file?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut stopped = done;
            loop {
                match file.read(&mut buf).await {
                    Ok(0) if stopped || !q.follow => return None,
                    Ok(0) => {
                        // At the end of what was written so far: check (once more after it
                        // stops) whether more can come.
                        let id = id.clone();
                        stopped = !with(&ctl, move |c| Ok(c.is_running_id(&id)))
                            .await
                            .unwrap_or(false);
                        if !stopped {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        return Some((Ok::<_, std::io::Error>(buf), (Some(file), stopped)));
                    }
                    Err(e) => return Some((Err(e), (None, true))),
                }
            }
        }
    });
    Ok(Body::from_stream(stream).into_response())
}

async fn container_port(
    State(ctl): State<SharedController>,
    Path(name): Path<String>,
) -> ApiResult<Vec<String>> {
    with(&ctl, move |c| c.container_ports(&name))
        .await
        .map(Json)
}

async fn stats(State(ctl): State<SharedController>) -> ApiResult<Vec<super::EndpointStats>> {
    with(&ctl, |c| Ok(c.stats())).await.map(Json)
}

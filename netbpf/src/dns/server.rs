//! The serving side: one UDP and one TCP listener on 127.0.0.11:53 inside each container's
//! namespace (sockets opened there by a thread that entered it; no NAT rule), UDP served by
//! hickory's `Server`, TCP by the daemon itself (hickory's TCP side has no connection
//! limit), both on the daemon's runtime. Answers come from the shared [`Table`]; everything
//! else is forwarded to the container's upstreams from the daemon's namespace, within each
//! container's share of upstream queries.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Header, HeaderCounts, Message, Metadata, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, PTR},
    },
};
use hickory_server::{
    Server,
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    runtime::Handle,
    sync::Semaphore,
    task::JoinHandle,
};

use super::table::{Answer, Table};
use crate::netns;

/// The address Docker's embedded DNS listens on, inside each container.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// Total time to get an answer upstream: well under the 5 s glibc and dig wait, so a
/// client gets SERVFAIL rather than its own timeout (aardvark-dns#482).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Records for containers change with their lifecycle: keep caches short.
const TTL: u32 = 5;
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// What one container may hold of the daemon at once, so that it cannot exhaust the
/// daemon's file descriptors (or others' answers): forwarded queries in flight (each an
/// upstream socket) and TCP connections. Beyond them, a query gets SERVFAIL at once and a
/// connection is closed.
const MAX_UPSTREAM_QUERIES: usize = 64;
const MAX_TCP_CONNECTIONS: usize = 32;
/// Forwarded queries in flight over all containers.
const MAX_UPSTREAM_TOTAL: usize = 1024;

/// Answers one container's queries.
struct Resolver {
    container_id: String,
    table: Arc<RwLock<Table>>,
    /// This container's share of upstream queries, and everyone's.
    upstream_slots: Arc<Semaphore>,
    all_upstream_slots: Arc<Semaphore>,
}

enum Reply {
    Records(Vec<Record>),
    Forwarded(Message),
    Fail(ResponseCode),
}

impl Resolver {
    async fn answer(&self, request: &Request) -> Reply {
        let Some(query) = request.queries.queries().first() else {
            return Reply::Fail(ResponseCode::FormErr);
        };
        let owner = Name::from(query.name().clone());
        self.answer_query(
            owner,
            query.query_type(),
            request.as_slice(),
            request.protocol(),
        )
        .await
    }

    /// The answer to a query for `owner`/`qtype` (`raw` is the whole query, to forward).
    async fn answer_query(
        &self,
        owner: Name,
        qtype: RecordType,
        raw: &[u8],
        protocol: Protocol,
    ) -> Reply {
        let name = owner.to_string();
        let (answer, upstreams) = {
            let table = crate::lock::read(&self.table);
            let Some(asker) = table.asker(&self.container_id) else {
                return Reply::Fail(ResponseCode::Refused);
            };
            let answer = match qtype {
                RecordType::A => table.lookup(&asker.networks, &name, true),
                RecordType::AAAA => table.lookup(&asker.networks, &name, false),
                RecordType::PTR => table.reverse(&asker.networks, &name),
                _ => Answer::Forward,
            };
            (answer, asker.upstreams.clone())
        };
        match answer {
            Answer::Local(ips) => Reply::Records(
                ips.into_iter()
                    .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::A(A(ip))))
                    .collect(),
            ),
            Answer::Pointer(target) => match Name::from_str(&format!("{target}.")) {
                Ok(target) => Reply::Records(vec![Record::from_rdata(
                    owner,
                    TTL,
                    RData::PTR(PTR(target)),
                )]),
                Err(_) => Reply::Fail(ResponseCode::ServFail),
            },
            Answer::Forward => {
                // Over its share (or everyone's), a container gets SERVFAIL at once rather
                // than another socket.
                let (Ok(_mine), Ok(_all)) = (
                    self.upstream_slots.try_acquire(),
                    self.all_upstream_slots.try_acquire(),
                ) else {
                    return Reply::Fail(ResponseCode::ServFail);
                };
                match forward(raw, &upstreams, protocol).await {
                    Some(message) => Reply::Forwarded(message),
                    None => Reply::Fail(ResponseCode::ServFail),
                }
            }
        }
    }

    /// The reply to one query received over TCP (hickory's TCP server has no connection
    /// limit, so the daemon serves TCP itself); `None` for a message that does not parse.
    async fn reply_bytes(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(raw).ok()?;
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.queries = request.queries.clone();
        let reply = match request.queries.first() {
            Some(query) => {
                self.answer_query(query.name().clone(), query.query_type(), raw, Protocol::Tcp)
                    .await
            }
            None => Reply::Fail(ResponseCode::FormErr),
        };
        match reply {
            Reply::Records(records) => {
                response.metadata.authoritative = true;
                response.answers = records;
            }
            Reply::Forwarded(message) => {
                response.metadata.response_code = message.metadata.response_code;
                response.metadata.truncation = message.metadata.truncation;
                response.answers = message.answers;
                response.authorities = message.authorities;
                response.additionals = message.additionals;
            }
            Reply::Fail(code) => response.metadata.response_code = code,
        }
        response.to_vec().ok()
    }
}

/// Serves one container's TCP clients, [`MAX_TCP_CONNECTIONS`] at a time: one more is
/// closed at once. Each connection may stay idle [`TCP_IDLE_TIMEOUT`] between queries.
async fn serve_tcp(listener: tokio::net::TcpListener, resolver: Arc<Resolver>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, most likely: let some close first.
                tracing::debug!(%error, "DNS TCP accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_connection(stream, &resolver).await;
        });
    }
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    resolver: &Resolver,
) -> std::io::Result<()> {
    loop {
        let len = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await??;
        let mut query = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query)).await??;
        let Some(reply) = resolver.reply_bytes(&query).await else {
            return Ok(());
        };
        stream
            .write_all(&(reply.len() as u16).to_be_bytes())
            .await?;
        stream.write_all(&reply).await?;
    }
}

/// Asks each upstream in turn, all within [`UPSTREAM_TIMEOUT`]; `None` if none answered.
/// Only a reply to this query counts: same id, same question (anything else on the socket
/// is someone else's, or forged).
async fn forward(query: &[u8], upstreams: &[SocketAddr], protocol: Protocol) -> Option<Message> {
    let asked = Message::from_vec(query).ok()?;
    let answers_it =
        |reply: &Message| reply.metadata.id == asked.metadata.id && reply.queries == asked.queries;
    let attempt = async {
        for upstream in upstreams {
            let each = UPSTREAM_TIMEOUT / upstreams.len().max(1) as u32;
            let result = match protocol {
                Protocol::Tcp => tokio::time::timeout(each, forward_tcp(query, *upstream)).await,
                _ => tokio::time::timeout(each, forward_udp(query, *upstream)).await,
            };
            if let Ok(Ok(bytes)) = result
                && let Ok(message) = Message::from_vec(&bytes)
                && answers_it(&message)
            {
                return Some(message);
            }
        }
        None
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

async fn forward_udp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("valid"),
        IpAddr::V6(_) => "[::]:0".parse().expect("valid"),
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let n = socket.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn forward_tcp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(upstream).await?;
    stream
        .write_all(&(query.len() as u16).to_be_bytes())
        .await?;
    stream.write_all(query).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The resolver as hickory's UDP server holds it (shared with the TCP side).
struct SharedResolver(Arc<Resolver>);

#[async_trait::async_trait]
impl RequestHandler for SharedResolver {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::new(&request.queries, request.edns.as_ref());
        let reply = self.0.answer(request).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let result = match &reply {
            Reply::Records(records) => {
                metadata.authoritative = true;
                response
                    .send_response(builder.build(metadata, records.iter(), [], [], []))
                    .await
            }
            Reply::Forwarded(message) => {
                metadata.response_code = message.metadata.response_code;
                metadata.truncation = message.metadata.truncation;
                let answers = message.answers.iter();
                let authorities = message.authorities.iter();
                let additionals = message.additionals.iter();
                response
                    .send_response(builder.build(metadata, answers, authorities, [], additionals))
                    .await
            }
            Reply::Fail(code) => {
                response
                    .send_response(builder.error_msg(&request.metadata, *code))
                    .await
            }
        };
        result.unwrap_or_else(|error| {
            tracing::debug!(%error, "DNS reply not sent");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

/// Gives the UDP socket room for a burst of queries (4 MiB; the default is about 200
/// KiB, which a burst of a thousand small queries overflows). SO_RCVBUFFORCE may exceed
/// rmem_max because the daemon is privileged; failure only means a smaller buffer.
fn grow_receive_buffer(socket: &std::net::UdpSocket) {
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One container's server: its task, and the `lo` steering links that must live as long.
struct Running {
    task: JoinHandle<()>,
    _steering: Vec<aya::programs::links::FdLink>,
}

/// The DNS servers of all containers, started and stopped by the controller.
pub struct DnsServers {
    runtime: Handle,
    table: Arc<RwLock<Table>>,
    running: BTreeMap<String, Running>,
    upstream_slots: Arc<Semaphore>,
}

impl DnsServers {
    pub fn new(runtime: Handle) -> Self {
        Self {
            runtime,
            table: Arc::default(),
            running: BTreeMap::new(),
            upstream_slots: Arc::new(Semaphore::new(MAX_UPSTREAM_TOTAL)),
        }
    }

    pub fn set_table(&self, table: Table) {
        *crate::lock::write(&self.table) = table;
    }

    /// Opens 127.0.0.11:DNS_SERVER_PORT (UDP and TCP) inside `ns` and serves it; the
    /// `steering` links (already attached to the namespace's `lo`) map port 53 onto it.
    pub fn start(
        &mut self,
        container_id: &str,
        ns: &File,
        steering: impl FnOnce() -> std::io::Result<Vec<aya::programs::links::FdLink>>,
    ) -> std::io::Result<()> {
        if self.running.contains_key(container_id) {
            return Ok(());
        }
        let addr = SocketAddr::from((DNS_ADDR, netbpf_common::DNS_SERVER_PORT));
        let (udp, tcp) = netns::run_in(ns, || -> std::io::Result<_> {
            let udp = std::net::UdpSocket::bind(addr)?;
            let tcp = std::net::TcpListener::bind(addr)?;
            udp.set_nonblocking(true)?;
            grow_receive_buffer(&udp);
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })
        .map_err(std::io::Error::other)??;
        let resolver = Arc::new(Resolver {
            container_id: container_id.to_owned(),
            table: self.table.clone(),
            upstream_slots: Arc::new(Semaphore::new(MAX_UPSTREAM_QUERIES)),
            all_upstream_slots: self.upstream_slots.clone(),
        });
        let _guard = self.runtime.enter();
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let steering = steering()?;
        let task = self.runtime.spawn(async move {
            let tcp = tokio::spawn(serve_tcp(tcp, resolver.clone()));
            let mut server = Server::new(SharedResolver(resolver));
            server.register_socket(udp);
            if let Err(error) = server.block_until_done().await {
                tracing::warn!(%error, "DNS server stopped");
            }
            tcp.abort();
        });
        self.running.insert(
            container_id.to_owned(),
            Running {
                task,
                _steering: steering,
            },
        );
        Ok(())
    }

    pub fn is_serving(&self, container_id: &str) -> bool {
        self.running.contains_key(container_id)
    }

    pub fn stop(&mut self, container_id: &str) {
        if let Some(running) = self.running.remove(container_id) {
            running.task.abort();
        }
    }
}

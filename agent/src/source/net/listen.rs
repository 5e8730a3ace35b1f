//! The listener threads of the network inputs: syslog over TCP (an accept thread, one
//! thread per connection), UDP and Unix datagram sockets (one thread each); an `http`
//! input's thread runs its server ([`super::http`]). They only read,
//! frame and queue; every wait is bounded (100 ms) so a stop is seen promptly.

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use crossbeam_channel::Sender;

use super::Message;
use super::framing::{StreamFramer, datagram};
use crate::config::{Listen, NetProtocol};
use crate::metrics::catalogue::{
    INPUT_CONNECTIONS, INPUT_CONNECTIONS_TOTAL, INPUT_KERNEL_DROPS_TOTAL, INPUT_REJECTED_TOTAL,
};

/// How long a blocking call waits at most before the stop flag is looked at again.
const POLL: Duration = Duration::from_millis(100);
/// At a stop, how long a connection keeps reading what its socket already holds.
const DRAIN: Duration = Duration::from_secs(1);
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// The receive buffer asked for on UDP sockets (the kernel caps it at
/// `net.core.rmem_max`): bursts wait there instead of being dropped.
const UDP_RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// What a listener needs to know of its input.
#[derive(Clone)]
pub(super) struct Spec {
    /// The input's index in the config's sources.
    pub index: usize,
    pub name: Arc<str>,
    pub max_message: usize,
    pub max_connections: usize,
    pub protocol: NetProtocol,
    /// `http`: the largest request body.
    pub max_body: usize,
}

impl Spec {
    pub(super) fn rejected(&self, reason: &'static str, n: u64) {
        if n > 0 {
            metrics::counter!(INPUT_REJECTED_TOTAL, "input" => self.name.clone(), "reason" => reason)
                .increment(n);
        }
    }

    fn send(&self, send: &Sender<Message>, body: Bytes) {
        // The ingest thread outlives every listener: a send fails only if it died.
        let _ = send.send(Message::One {
            input: self.index,
            body,
        });
    }
}

/// A bound socket whose thread has not started yet.
pub(super) enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Unix(UnixDatagram, std::path::PathBuf),
}

/// Binds `listen` (before the agent drops the capabilities a port below 1024
/// needs).
pub(super) fn bind(listen: &Listen) -> anyhow::Result<Bound> {
    Ok(match listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            listener.set_nonblocking(true)?;
            Bound::Tcp(listener)
        }
        Listen::Udp(addr) => {
            let socket = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
            set_receive_buffer(socket.as_fd());
            socket.set_read_timeout(Some(POLL))?;
            Bound::Udp(socket)
        }
        Listen::Unix(path) => {
            let socket = bind_unix(path)?;
            socket.set_read_timeout(Some(POLL))?;
            Bound::Unix(socket, path.clone())
        }
    })
}

/// Starts the thread of a bound socket.
pub(super) fn start(
    bound: Bound,
    spec: Spec,
    send: Sender<Message>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let thread = std::thread::Builder::new().name(format!("input-{}", spec.name));
    match bound {
        Bound::Tcp(listener) if spec.protocol != NetProtocol::Syslog => {
            let runtime = super::http::runtime()?;
            let listener = {
                let _context = runtime.enter();
                tokio::net::TcpListener::from_std(listener)?
            };
            thread.spawn(move || runtime.block_on(super::http::serve(listener, spec, send, stop)))
        }
        Bound::Tcp(listener) => thread.spawn(move || accept_loop(&listener, &spec, &send, &stop)),
        Bound::Udp(socket) => thread.spawn(move || udp_loop(&socket, &spec, &send, &stop)),
        Bound::Unix(socket, path) => thread.spawn(move || {
            datagram_loop(|buf| socket.recv(buf), None, &spec, &send, &stop);
            let _ = std::fs::remove_file(&path);
        }),
    }
}

/// A Unix datagram socket at `path`; a socket file left there by an earlier run is
/// replaced, anything else there is an error (never deleted).
fn bind_unix(path: &Path) -> anyhow::Result<UnixDatagram> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
    }
    UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))
}

fn accept_loop(
    listener: &TcpListener,
    spec: &Spec,
    send: &Sender<Message>,
    stop: &Arc<AtomicBool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    loop {
        // At a stop, the connections still in the backlog are accepted too: their
        // senders' writes succeeded, so what they sent is read before the end.
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && !readable(listener.as_fd(), POLL) {
            connections.retain(|c| !c.is_finished());
            continue;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if stopping => break,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => {
                // Out of descriptors, a connection reset before accept: the next
                // one may do, so the listener stays.
                tracing::warn!(input = %spec.name, error = %e, "accepting a connection");
                std::thread::sleep(POLL);
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= spec.max_connections {
            spec.rejected("connection_limit", 1);
            drop(stream);
            continue;
        }
        metrics::counter!(INPUT_CONNECTIONS_TOTAL, "input" => spec.name.clone()).increment(1);
        open.fetch_add(1, Ordering::Relaxed);
        let gauge = metrics::gauge!(INPUT_CONNECTIONS, "input" => spec.name.clone());
        gauge.increment(1.0);
        let ended = {
            let open = open.clone();
            move || {
                open.fetch_sub(1, Ordering::Relaxed);
                gauge.decrement(1.0);
            }
        };
        let (owned, send, stop) = (spec.clone(), send.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{}", spec.name))
            .spawn(move || {
                connection(stream, &owned, &send, &stop);
                ended();
            });
        match spawned {
            Ok(c) => connections.push(c),
            Err(e) => {
                // The closure (and its `ended`) was dropped unrun.
                open.fetch_sub(1, Ordering::Relaxed);
                metrics::gauge!(INPUT_CONNECTIONS, "input" => spec.name.clone()).decrement(1.0);
                tracing::warn!(input = %spec.name, error = %e, "no thread for a connection");
            }
        }
        connections.retain(|c| !c.is_finished());
    }
    for c in connections {
        let _ = c.join();
    }
}

/// One TCP connection until it closes or the input stops.
fn connection(mut stream: TcpStream, spec: &Spec, send: &Sender<Message>, stop: &AtomicBool) {
    let mut framer = StreamFramer::new(spec.max_message);
    let mut buf = vec![0u8; 64 * 1024];
    let _ = stream.set_read_timeout(Some(POLL));
    let mut draining: Option<Instant> = None;
    loop {
        if draining.is_none() && stop.load(Ordering::Relaxed) {
            // What the sender already wrote is in the socket: read it before closing.
            let _ = stream.set_nonblocking(true);
            draining = Some(Instant::now() + DRAIN);
        }
        if draining.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let before = framer.stats.too_large;
                framer.push(&buf[..n], &mut |m| spec.send(send, m));
                spec.rejected("too_large", framer.stats.too_large - before);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if draining.is_some() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(input = %spec.name, error = %e, "connection ended");
                break;
            }
        }
    }
    if framer.finish(&mut |m| spec.send(send, m)) {
        spec.rejected("incomplete", 1);
    }
}

fn udp_loop(socket: &UdpSocket, spec: &Spec, send: &Sender<Message>, stop: &AtomicBool) {
    let inode = socket_inode(socket.as_fd());
    let drops = inode.map(|inode| KernelDrops {
        inode,
        v6: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
        counter: metrics::counter!(INPUT_KERNEL_DROPS_TOTAL, "input" => spec.name.clone()),
        next: Instant::now(),
    });
    datagram_loop(|buf| socket.recv(buf), drops, spec, send, stop);
}

/// Datagrams from `recv` (which waits at most [`POLL`]) until the stop; then what the
/// socket still holds.
fn datagram_loop(
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    mut drops: Option<KernelDrops>,
    spec: &Spec,
    send: &Sender<Message>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut draining: Option<Instant> = None;
    loop {
        if let Some(d) = drops.as_mut() {
            d.refresh();
        }
        if draining.is_none() && stop.load(Ordering::Relaxed) {
            draining = Some(Instant::now() + DRAIN);
        }
        match recv(&mut buf) {
            Ok(n) => {
                let keep = n.min(spec.max_message + 1);
                if n > spec.max_message {
                    spec.rejected("too_large", 1);
                }
                let body = datagram(Bytes::copy_from_slice(&buf[..keep]));
                if !body.is_empty() {
                    spec.send(send, body);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if draining.is_some() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(input = %spec.name, error = %e, "receiving a datagram");
                std::thread::sleep(POLL);
            }
        }
        if draining.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
    }
    if let Some(d) = drops.as_mut() {
        d.next = Instant::now();
        d.refresh();
    }
}

/// The kernel's drop count of one UDP socket, mirrored into a counter every second.
struct KernelDrops {
    inode: u64,
    v6: bool,
    counter: metrics::Counter,
    next: Instant,
}

impl KernelDrops {
    fn refresh(&mut self) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + Duration::from_secs(1);
        let table = if self.v6 {
            "/proc/net/udp6"
        } else {
            "/proc/net/udp"
        };
        if let Some(drops) = std::fs::read_to_string(table)
            .ok()
            .and_then(|text| udp_drops(&text, self.inode))
        {
            self.counter.absolute(drops);
        }
    }
}

/// The `drops` column of the socket with `inode` in a `/proc/net/udp` table.
pub(super) fn udp_drops(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let this: u64 = columns.get(9)?.parse().ok()?;
        (this == inode).then(|| columns.get(12)?.parse().ok())?
    })
}

fn socket_inode(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: fstat writes into the zeroed struct; fd is a live descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some(st.st_ino)
}

fn set_receive_buffer(fd: BorrowedFd<'_>) {
    let size = UDP_RECEIVE_BUFFER;
    // SAFETY: a valid descriptor and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_RCVBUF not set");
    }
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_column_of_the_sockets_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 1234 2 0000000000000000 0\n\
          2: 0100007F:15AA 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 98765 2 0000000000000000 42\n";
        assert_eq!(udp_drops(table, 98765), Some(42));
        assert_eq!(udp_drops(table, 1234), Some(0));
        assert_eq!(udp_drops(table, 5), None);
        assert_eq!(udp_drops("garbage\nmore garbage here", 5), None);
    }

    #[test]
    fn a_unix_socket_replaces_a_stale_socket_never_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = bind_unix(&path).unwrap();
        drop(first);
        // An earlier run's socket file is left behind: replaced.
        let second = bind_unix(&path).unwrap();
        drop(second);
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let err = bind_unix(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}

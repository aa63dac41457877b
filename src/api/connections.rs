//! What a single client connection may cost, bounded where actix-web leaves it open.
//!
//! - **A client that stops reading.** Each accepted socket gets `SO_SNDBUF`
//!   (`server.send_buffer_bytes`) and `TCP_USER_TIMEOUT` (`server.send_timeout_secs`): the
//!   kernel holds at most that much unsent answer, and aborts the connection once none of it
//!   has moved for the timeout. actix stops polling an answer's body while 32 KiB wait in its
//!   own write buffer, and a shared story's text lives once in its flight (`stories::cache`),
//!   so a stalled stream never slows the generation its other readers share.
//! - **A slow request head after the first.** actix times only a connection's first head
//!   (`server.client_request_timeout_secs`, answered 408); after an answer, its keep-alive
//!   timer stops at the next byte received, so a client could trickle a second head forever.
//!   A watchdog per connection closes it once it has been idle for
//!   `keep_alive_secs + client_request_timeout_secs`: no request in progress and no answer
//!   bytes left in the kernel to send (an honest idle connection is closed by actix's
//!   keep-alive before that, and a client still reading an answer is left alone). A
//!   request is in progress from the end of its head until its answer's body is dropped
//!   ([`InProgress`], held by `api::finish`).
//! - Open connections are a gauge in `/metrics`.
//!
//! The watchdog holds a duplicate of the socket's descriptor (so it can never shut down a
//! descriptor number the kernel has since given to another connection), dropped with the
//! connection's state when actix drops the connection.

use std::any::Any;
use std::cell::Cell;
use std::net::Shutdown;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use actix_web::rt::time::{sleep, sleep_until, Instant};
use actix_web::HttpRequest;
use socket2::{SockRef, Socket};

use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// The per-connection settings, applied by [`ConnectionPolicy::on_connect`].
pub struct ConnectionPolicy {
    send_timeout: Duration,
    send_buffer_bytes: usize,
    /// Longest time without a request in progress before the watchdog closes a connection.
    idle_limit: Duration,
    metrics: Arc<Metrics>,
}

impl ConnectionPolicy {
    pub fn new(server: &ServerConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            send_timeout: Duration::from_secs(server.send_timeout_secs),
            send_buffer_bytes: server.send_buffer_bytes,
            idle_limit: Duration::from_secs(
                server.keep_alive_secs + server.client_request_timeout_secs,
            ),
            metrics,
        }
    }

    /// `HttpServer::on_connect`: sets the socket's limits, starts its watchdog, and leaves
    /// the connection's state in its extensions for [`InProgress::start`].
    pub fn on_connect(&self, io: &dyn Any, extensions: &mut Extensions) {
        let Some(stream) = io.downcast_ref::<TcpStream>() else {
            return;
        };
        let socket = SockRef::from(stream);
        if let Err(error) = socket
            .set_send_buffer_size(self.send_buffer_bytes)
            .and_then(|()| socket.set_tcp_user_timeout(Some(self.send_timeout)))
        {
            tracing::warn!(%error, "cannot set the connection's send limits");
        }
        let watched = match socket.try_clone() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "cannot watch a connection (no descriptor left?)");
                return;
            }
        };
        let connection = Rc::new(Connection {
            socket: watched,
            in_progress: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            metrics: Arc::clone(&self.metrics),
        });
        self.metrics.connection_opened();
        actix_web::rt::spawn(watch(Rc::downgrade(&connection), self.idle_limit));
        extensions.insert(ConnectionState(connection));
    }
}

/// One connection, shared by its watchdog (weakly) and its requests.
struct Connection {
    /// A duplicate of the connection's socket (module doc).
    socket: Socket,
    /// Requests whose answer is not finished.
    in_progress: Cell<usize>,
    /// When the last request in progress finished (or the connection opened).
    idle_since: Cell<Instant>,
    metrics: Arc<Metrics>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// The connection's state in its extensions (`HttpRequest::conn_data`).
#[derive(Clone)]
struct ConnectionState(Rc<Connection>);

/// How often the watchdog looks at a connection still sending its last answer.
const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// Bytes of answer the kernel has not yet seen acknowledged (`TIOCOUTQ`); 0 when unknown.
fn unsent_bytes(socket: &Socket) -> usize {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut unsent: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one c_int through the valid pointer; the descriptor is ours.
        let status = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) };
        if status == 0 {
            return usize::try_from(unsent).unwrap_or(0);
        }
    }
    let _ = socket;
    0
}

/// Closes the connection once it has been idle (module doc) for too long; ends when actix
/// drops the connection.
async fn watch(connection: Weak<Connection>, idle_limit: Duration) {
    loop {
        let Some(state) = connection.upgrade() else {
            return;
        };
        if state.in_progress.get() > 0 {
            drop(state);
            sleep(idle_limit).await;
            continue;
        }
        if unsent_bytes(&state.socket) > 0 {
            // Still sending the last answer: idle only once it is out.
            state.idle_since.set(Instant::now());
            drop(state);
            sleep(DRAIN_CHECK.min(idle_limit)).await;
            continue;
        }
        let deadline = state.idle_since.get() + idle_limit;
        if Instant::now() >= deadline {
            tracing::debug!("closing a connection idle in the middle of a request head");
            let _ = state.socket.shutdown(Shutdown::Both);
            return;
        }
        drop(state);
        sleep_until(deadline).await;
    }
}

/// A request in progress on its connection, until dropped.
pub struct InProgress(Rc<Connection>);

impl InProgress {
    /// Marks `request` in progress; `None` when its connection is not watched.
    pub fn start(request: &HttpRequest) -> Option<Self> {
        let state = request.conn_data::<ConnectionState>()?;
        let connection = Rc::clone(&state.0);
        connection.in_progress.set(connection.in_progress.get() + 1);
        Some(Self(connection))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let connection = &self.0;
        connection
            .in_progress
            .set(connection.in_progress.get().saturating_sub(1));
        connection.idle_since.set(Instant::now());
    }
}

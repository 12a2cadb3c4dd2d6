//! systemd integration: the sd_notify protocol (READY, WATCHDOG, STOPPING, STATUS) over the
//! datagram socket systemd names in `NOTIFY_SOCKET`, without libsystemd.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing. Sending never blocks: the
//! socket is non-blocking and a full or vanished socket is ignored (systemd then acts on its
//! own timeouts, which is what the watchdog is for).
//!
//! Must not: decide when the loop is healthy; the loop calls [`Notifier::watchdog`] only when
//! it made progress.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go.
#[derive(Debug)]
enum Target {
    Path(PathBuf),
    /// Linux abstract socket name (the `@` form of `NOTIFY_SOCKET`), without the `@`.
    Abstract(Vec<u8>),
}

/// Sends sd_notify messages; a no-op outside systemd.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd sets: `NOTIFY_SOCKET`, and `WATCHDOG_USEC` (honoured when
    /// `WATCHDOG_PID` is unset or this process).
    pub fn from_env() -> Self {
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|p| p == std::process::id())
            })
            .filter(|&us| us > 0)
            .map(Duration::from_micros);
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(s) => Self::with_socket(&s.to_string_lossy(), watchdog),
            None => Self { socket: None, watchdog },
        }
    }

    /// To the socket `addr` (a path, or `@name` for an abstract socket).
    pub fn with_socket(addr: &str, watchdog: Option<Duration>) -> Self {
        let target = match addr.strip_prefix('@') {
            Some(name) => Target::Abstract(name.as_bytes().to_vec()),
            None => Target::Path(PathBuf::from(addr)),
        };
        let socket = UnixDatagram::unbound().ok().filter(|s| s.set_nonblocking(true).is_ok());
        if socket.is_none() {
            log::warn!("sd_notify: cannot create a datagram socket; systemd will not hear from us");
        }
        Self { socket: socket.map(|s| (s, target)), watchdog }
    }

    /// The watchdog interval systemd expects pings within, if any.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, message: &str) {
        let Some((socket, target)) = &self.socket else { return };
        let result = match target {
            Target::Path(p) => socket.send_to(message.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| socket.send_to_addr(message.as_bytes(), &a))
            }
        };
        if let Err(e) = result {
            log::debug!("sd_notify {message:?}: {e}");
        }
    }

    /// Start-up is complete; `status` is shown by `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", status.replace('\n', " ")));
    }

    /// The loop made progress.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// A free-form status line.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", status.replace('\n', " ")));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::with_socket(path.to_str().unwrap(), Some(Duration::from_secs(10)));
        n.ready("replay x");
        n.watchdog();
        n.stopping();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = server.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(got, ["READY=1\nSTATUS=replay x", "WATCHDOG=1", "STOPPING=1"]);
    }

    #[test]
    fn abstract_socket_and_no_watchdog() {
        let name = format!("portier-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::with_socket(&format!("@{name}"), None);
        n.watchdog(); // no watchdog configured: nothing sent
        n.status("hello");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=hello");
    }

    #[test]
    fn outside_systemd_nothing_happens() {
        let n = Notifier::default();
        n.ready("x");
        n.watchdog();
        assert_eq!(n.watchdog_interval(), None);
    }
}

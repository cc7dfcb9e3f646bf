//! Backend addresses: `ip:port`, `[v6]:port` or `dns-name:port`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Why a backend address is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// No `:port` part.
    #[error("missing port")]
    MissingPort,
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// The host is neither an IP address nor a valid DNS name.
    #[error("invalid host {0:?}")]
    BadHost(String),
}

/// Where a backend listens. Names are resolved when a connection is opened, so a backend
/// whose address changes in DNS is followed without a reload.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    /// `host:port` as it is shown and logged (the name lowercased).
    text: Arc<str>,
    host_len: u16,
    ip: Option<IpAddr>,
    port: u16,
}

impl BackendAddr {
    /// Parses `127.0.0.1:8080`, `[::1]:8080` or `app.internal:8080` (name lowercased).
    pub fn parse(s: &str) -> Result<Self, AddrError> {
        let (host, port) = s.rsplit_once(':').ok_or(AddrError::MissingPort)?;
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => return Err(AddrError::BadPort(port.to_owned())),
        };
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip: IpAddr = v6
                .parse()
                .map_err(|_| AddrError::BadHost(host.to_owned()))?;
            return Ok(Self::new(host, Some(ip), port));
        }
        if host.contains(':') {
            // An IPv6 literal must be bracketed: "::1:80" is ambiguous.
            return Err(AddrError::BadHost(host.to_owned()));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self::new(host, Some(ip), port));
        }
        let name = host.to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
            && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if !valid {
            return Err(AddrError::BadHost(host.to_owned()));
        }
        Ok(Self::new(&name, None, port))
    }

    fn new(host: &str, ip: Option<IpAddr>, port: u16) -> Self {
        Self {
            text: format!("{host}:{port}").into(),
            host_len: u16::try_from(host.len()).unwrap_or(u16::MAX),
            ip,
            port,
        }
    }

    /// `host:port`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip.map(|ip| SocketAddr::new(ip, self.port))
    }

    /// The host part as written (`[..]` kept for IPv6).
    pub fn host(&self) -> &str {
        &self.text[..usize::from(self.host_len)]
    }

    /// The host to resolve or connect to (IPv6 without brackets).
    pub fn connect_host(&self) -> &str {
        self.host().trim_start_matches('[').trim_end_matches(']')
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl From<SocketAddr> for BackendAddr {
    fn from(a: SocketAddr) -> Self {
        let host = match a.ip() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        Self::new(&host, Some(a.ip()), a.port())
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendAddr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ips_names_and_rejects_garbage() {
        let a = BackendAddr::parse("127.0.0.1:8080").unwrap();
        assert_eq!(a.socket_addr(), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(a.to_string(), "127.0.0.1:8080");
        let v6 = BackendAddr::parse("[::1]:80").unwrap();
        assert_eq!(v6.socket_addr(), Some("[::1]:80".parse().unwrap()));
        assert_eq!(v6.connect_host(), "::1");
        let n = BackendAddr::parse("App.Internal:9000").unwrap();
        assert_eq!(n.socket_addr(), None);
        assert_eq!(n.to_string(), "app.internal:9000");
        assert_eq!(
            BackendAddr::parse("127.0.0.1:"),
            Err(AddrError::BadPort(String::new()))
        );
        assert_eq!(BackendAddr::parse("nope"), Err(AddrError::MissingPort));
        assert_eq!(
            BackendAddr::parse("a_b:80"),
            Err(AddrError::BadHost("a_b".into()))
        );
        assert_eq!(
            BackendAddr::parse("::1:80"),
            Err(AddrError::BadHost("::1".into()))
        );
        assert_eq!(
            BackendAddr::parse("host:0"),
            Err(AddrError::BadPort("0".into()))
        );
        assert_eq!(
            BackendAddr::parse("300.1.1.1:80"),
            Err(AddrError::BadHost("300.1.1.1".into()))
        );
    }
}

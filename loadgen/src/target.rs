//! Where loadgen may send traffic: a server on a loopback address, never
//! anything else. Every address loadgen connects to comes out of
//! [`Target::parse`], which refuses any host outside 127.0.0.0/8 and ::1
//! before a socket is opened, and never asks DNS (only the literal name
//! `localhost` is accepted, as 127.0.0.1).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context};
use url::Url;

/// A validated loopback endpoint, with what the URL carried besides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The user name of the URL (Redis ACL user), if any.
    pub username: Option<String>,
    /// The password of the URL (Redis AUTH), if any.
    pub password: Option<String>,
}

impl Target {
    /// Parses `http://HOST:PORT`, `ws://HOST:PORT`, `redis://[:PASSWORD@]HOST:PORT`
    /// or a bare `HOST:PORT`. Only a root path is accepted: loadgen builds its own
    /// paths.
    pub fn parse(raw: &str, default_port: u16) -> anyhow::Result<Target> {
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        let url = Url::parse(&with_scheme).with_context(|| format!("not a valid URL: {raw}"))?;
        match url.scheme() {
            "http" | "ws" | "redis" => {}
            "https" | "wss" | "rediss" => {
                bail!("{raw}: TLS is not supported; loadgen speaks plain http/ws/redis to a loopback server")
            }
            other => bail!("{raw}: unsupported scheme {other:?} (use http://, ws:// or redis://)"),
        }
        let host = url
            .host()
            .with_context(|| format!("{raw}: the URL has no host"))?;
        let ip = loopback_ip(&host)?;
        if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
            bail!("{raw}: give only scheme://host:port; loadgen adds the paths itself");
        }
        let port = url.port().unwrap_or(default_port);
        let username = Some(url.username().to_owned()).filter(|u| !u.is_empty());
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            username,
            password: url.password().map(str::to_owned),
        })
    }

    /// `http://127.0.0.1:8000` + `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://127.0.0.1:8000` + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// The loopback address a URL host names, or an error saying why loadgen
/// will not send traffic there.
fn loopback_ip(host: &url::Host<&str>) -> anyhow::Result<IpAddr> {
    let ip = match host {
        url::Host::Ipv4(v4) => IpAddr::V4(*v4),
        url::Host::Ipv6(v6) => IpAddr::V6(*v6),
        // Schemes the URL standard does not know (redis://) keep IP
        // literals as opaque host strings.
        url::Host::Domain(name) => match literal_ip(name) {
            Some(ip) => ip,
            None if name.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
            None => bail!(
                "refusing to send traffic to {name:?}: loadgen only targets loopback addresses \
                 (127.0.0.0/8, ::1 or localhost) and does not resolve host names"
            ),
        },
    };
    if !ip.is_loopback() {
        bail!(
            "refusing to send traffic to {ip}: loadgen only targets loopback addresses \
             (127.0.0.0/8, ::1 or localhost)"
        );
    }
    Ok(ip)
}

fn literal_ip(name: &str) -> Option<IpAddr> {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse().ok()
}

/// The `index`-th loopback source address (127.0.0.1, 127.0.0.2, ...), used to
/// spread many client sockets over several source addresses so that each has
/// its own ephemeral port range. `None` past 127.255.255.254.
pub fn source_address(index: u32) -> Option<IpAddr> {
    let host = index.checked_add(1)?;
    if host >= 0x00ff_ffff {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> SocketAddr {
        Target::parse(raw, 8000).expect(raw).addr
    }

    fn refused(raw: &str) -> String {
        format!("{:#}", Target::parse(raw, 8000).expect_err(raw))
    }

    #[test]
    fn accepts_loopback_hosts() {
        assert_eq!(ok("http://127.0.0.1:9000"), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(ok("ws://127.3.4.5:1"), "127.3.4.5:1".parse().unwrap());
        assert_eq!(ok("http://[::1]:8000/"), "[::1]:8000".parse().unwrap());
        assert_eq!(ok("localhost:7000"), "127.0.0.1:7000".parse().unwrap());
        assert_eq!(ok("http://127.0.0.1"), "127.0.0.1:8000".parse().unwrap());
    }

    #[test]
    fn refuses_everything_else() {
        for raw in [
            "http://10.0.0.1:8000",
            "http://192.168.1.2",
            "http://0.0.0.0:8000",
            "http://8.8.8.8",
            "http://example.com",
            "http://[::ffff:127.0.0.1]:80",
            "http://[2001:db8::1]",
        ] {
            assert!(refused(raw).contains("refusing"), "{raw}: {}", refused(raw));
        }
        assert!(refused("https://127.0.0.1").contains("TLS"));
        assert!(refused("http://127.0.0.1/ws/market-data/").contains("only scheme"));
    }

    #[test]
    fn redis_url_carries_credentials() {
        let t = Target::parse("redis://user:pw@127.0.0.1:6380", 6379).unwrap();
        assert_eq!(t.addr, "127.0.0.1:6380".parse().unwrap());
        assert_eq!(t.username.as_deref(), Some("user"));
        assert_eq!(t.password.as_deref(), Some("pw"));
        let t = Target::parse("redis://127.0.0.1", 6379).unwrap();
        assert_eq!(t.addr.port(), 6379);
        assert_eq!(t.password, None);
        let t = Target::parse("redis://[::1]:7000", 6379).unwrap();
        assert_eq!(t.addr, "[::1]:7000".parse().unwrap());
        assert!(Target::parse("redis://10.1.2.3:6379", 6379).is_err());
        assert!(Target::parse("redis://redis.internal:6379", 6379).is_err());
    }

    #[test]
    fn source_addresses_count_up_from_127_0_0_1() {
        assert_eq!(source_address(0), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_address(1), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(source_address(255), Some("127.0.1.0".parse().unwrap()));
        assert_eq!(source_address(u32::MAX), None);
    }
}

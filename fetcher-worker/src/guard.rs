//! Refuses to connect to loopback, private, link-local, unspecified, multicast and cloud
//! metadata addresses, checked on the resolved addresses (a DNS resolver wrapper), on IP
//! literals in URLs, and on every redirect hop. `--allow-private` turns it off for local
//! tests and demos.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Whether an address is one the fetcher must not reach from a task.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                // carrier-grade NAT 100.64.0.0/10
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // 192.0.0.0/24 (IETF protocol assignments, incl. some metadata services)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                // 198.18.0.0/15 benchmarking
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_blocked(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // unique local fc00::/7
                || (s[0] & 0xfe00) == 0xfc00
                // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfe80
                // site-local fec0::/10 (deprecated)
                || (s[0] & 0xffc0) == 0xfec0
                // AWS IMDS over IPv6 fd00:ec2::254 is in fc00::/7 already
                // NAT64 64:ff9b::/96 may map to private v4
                || (s[0] == 0x64 && s[1] == 0xff9b)
        }
    }
}

/// The error a blocked connection fails with, recognised by [`crate::http`].
#[derive(Debug)]
pub struct BlockedAddress(pub String);

impl std::fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves only to blocked (private or local) addresses",
            self.0
        )
    }
}

impl std::error::Error for BlockedAddress {}

/// The system resolver, with blocked addresses removed unless `allow_private`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

type Resolved = std::vec::IntoIter<SocketAddr>;
type ResolveError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = Resolved;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Resolved, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_string();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_blocked(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(BlockedAddress(host)) as ResolveError);
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Checks a URL's host when it is an IP literal (names are checked at resolution).
pub fn check_literal(url: &url::Url) -> Result<(), BlockedAddress> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if is_blocked(ip) {
        Err(BlockedAddress(ip.to_string()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(s: &str) -> bool {
        is_blocked(s.parse().unwrap())
    }

    #[test]
    fn blocks_local_and_private() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(blocked(a), "{a}");
        }
        for a in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!blocked(a), "{a}");
        }
    }

    #[test]
    fn literal_hosts() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(check_literal(&u("http://127.0.0.1:8080/x")).is_err());
        assert!(check_literal(&u("http://[::1]/x")).is_err());
        assert!(check_literal(&u("http://8.8.8.8/x")).is_ok());
        assert!(check_literal(&u("http://localhost/x")).is_ok());
    }
}

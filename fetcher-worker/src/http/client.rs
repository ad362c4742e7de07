//! The connection side of the fetcher's HTTP client: hyper-util's pooled client over a TCP
//! connector that resolves through the address guard (unless `--allow-private`), with
//! `TCP_NODELAY` and a connect timeout, and TLS by rustls with the platform's verifier
//! (HTTP/2 where the origin offers it by ALPN).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::HttpOptions;
use crate::guard::GuardedResolver;

/// The pooled client every download of a fetcher shares.
pub type Pool = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Empty<Bytes>>;

/// Keepalive probes start after this long idle, and repeat this often.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// Unacknowledged data for this long closes the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the client; fails only if the platform's certificate verifier cannot start.
pub fn pool(options: &HttpOptions) -> anyhow::Result<Pool> {
    let mut tcp = HttpConnector::new_with_resolver(GuardedResolver {
        allow_private: options.allow_private,
    });
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(options.timeout.min(Duration::from_secs(5))));
    // A pooled connection whose peer vanished is found by the kernel, not only by the
    // download's overall timeout (reqwest's settings).
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_interval(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_retries(Some(3));
    tcp.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let connector = HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(provider)
        .map_err(|e| anyhow::anyhow!("tls setup: {e}"))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(options.pool_idle_per_host)
        .build(connector))
}

//! Following redirects: which responses are redirects, where they lead, and what a hop
//! may not do. At most [`MAX_REDIRECTS`] hops, each to `http` or `https`, each checked
//! against the address guard; credentials (`Authorization`, cookies) are not carried to
//! another origin.

use hyper::StatusCode;
use hyper::header::{
    AUTHORIZATION, COOKIE, HeaderMap, LOCATION, PROXY_AUTHORIZATION, WWW_AUTHENTICATE,
};
use tributary::policy::{ErrorClass, Failure};

use crate::guard;

pub const MAX_REDIRECTS: usize = 5;

/// What a response means for the download.
#[derive(Debug, PartialEq)]
pub enum Hop {
    /// Not a redirect (or one without a usable `Location`): this is the response.
    Done,
    /// Request this URL next.
    Follow(url::Url),
}

/// Where a response to a request for `current` leads, after `taken` redirects so far.
/// `allow_private` turns the address guard off, as `--allow-private` does.
pub fn next_hop(
    current: &url::Url,
    status: StatusCode,
    headers: &HeaderMap,
    taken: usize,
    allow_private: bool,
) -> Result<Hop, Failure> {
    if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
        return Ok(Hop::Done);
    }
    let Some(next) = headers
        .get(LOCATION)
        // UTF-8, not only visible ASCII: servers send raw non-ASCII paths, and `join`
        // percent-encodes them.
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|location| current.join(location).ok())
    else {
        return Ok(Hop::Done);
    };
    let refused = |reason: &str| Failure::new(ErrorClass::Redirects, reason.to_string());
    if taken >= MAX_REDIRECTS {
        return Err(refused(&format!("more than {MAX_REDIRECTS} redirects")));
    }
    if !matches!(next.scheme(), "http" | "https") {
        return Err(refused("redirect to a scheme that is not http or https"));
    }
    if !allow_private && let Err(blocked) = guard::check_literal(&next) {
        return Err(Failure::new(
            ErrorClass::BlockedAddress,
            blocked.to_string(),
        ));
    }
    Ok(Hop::Follow(next))
}

/// Drops the credentials of a request that moves to another origin (scheme, host or port).
pub fn strip_credentials(headers: &mut HeaderMap, from: &url::Url, to: &url::Url) {
    let same_origin = from.scheme() == to.scheme()
        && from.host_str() == to.host_str()
        && from.port_or_known_default() == to.port_or_known_default();
    if same_origin {
        return;
    }
    for name in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE] {
        headers.remove(name);
    }
    headers.remove("cookie2");
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    fn located(to: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, HeaderValue::from_str(to).unwrap());
        headers
    }

    fn hop(status: u16, to: &str, taken: usize) -> Result<Hop, Failure> {
        let from = url("http://a.example/x/y?q=1");
        next_hop(
            &from,
            StatusCode::from_u16(status).unwrap(),
            &located(to),
            taken,
            false,
        )
    }

    #[test]
    fn redirects_lead_where_their_location_says() {
        for status in [301, 302, 303, 307, 308] {
            assert_eq!(
                hop(status, "/z", 0).unwrap(),
                Hop::Follow(url("http://a.example/z"))
            );
        }
        assert_eq!(
            hop(302, "w", 0).unwrap(),
            Hop::Follow(url("http://a.example/x/w"))
        );
        assert_eq!(
            hop(301, "https://b.example/", 4).unwrap(),
            Hop::Follow(url("https://b.example/"))
        );
        let raw = HeaderValue::from_bytes("/café".as_bytes()).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, raw);
        let from = url("http://a.example/x");
        assert_eq!(
            next_hop(&from, StatusCode::FOUND, &headers, 0, false).unwrap(),
            Hop::Follow(url("http://a.example/caf%C3%A9"))
        );
        // Not a redirect, or one that says nowhere to go: the response stands.
        assert_eq!(hop(200, "/z", 0).unwrap(), Hop::Done);
        assert_eq!(hop(304, "/z", 0).unwrap(), Hop::Done);
        let from = url("http://a.example/");
        let none = next_hop(&from, StatusCode::FOUND, &HeaderMap::new(), 0, false);
        assert_eq!(none.unwrap(), Hop::Done);
    }

    #[test]
    fn a_hop_too_many_another_scheme_or_a_private_address_is_refused() {
        let too_many = hop(302, "/z", MAX_REDIRECTS).unwrap_err();
        assert_eq!(too_many.class, ErrorClass::Redirects);
        assert!(
            too_many.reason.contains("more than 5"),
            "{}",
            too_many.reason
        );
        assert_eq!(
            hop(302, "ftp://a.example/f", 0).unwrap_err().class,
            ErrorClass::Redirects
        );
        for private in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://169.254.169.254/",
        ] {
            assert_eq!(
                hop(307, private, 0).unwrap_err().class,
                ErrorClass::BlockedAddress,
                "{private}"
            );
        }
        let from = url("http://a.example/");
        let allowed = next_hop(
            &from,
            StatusCode::FOUND,
            &located("http://127.0.0.1/"),
            0,
            true,
        );
        assert_eq!(allowed.unwrap(), Hop::Follow(url("http://127.0.0.1/")));
    }

    #[test]
    fn credentials_stay_with_their_origin() {
        let with_credentials = || {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
            headers.insert(COOKIE, HeaderValue::from_static("s=1"));
            headers.insert("x-api-key", HeaderValue::from_static("k"));
            headers
        };
        let from = url("https://a.example/x");
        let mut same = with_credentials();
        strip_credentials(&mut same, &from, &url("https://a.example:443/y"));
        assert!(same.contains_key(AUTHORIZATION) && same.contains_key(COOKIE));
        for other in [
            "https://b.example/x",
            "http://a.example/x",
            "https://a.example:8443/x",
        ] {
            let mut headers = with_credentials();
            strip_credentials(&mut headers, &from, &url(other));
            assert!(!headers.contains_key(AUTHORIZATION), "{other}");
            assert!(!headers.contains_key(COOKIE), "{other}");
            assert!(headers.contains_key("x-api-key"), "{other}");
        }
    }
}

//! Fetches of the `http(s)://` URLs a request names (a group's `file_url`,
//! a bulk job's source), confined so that a request cannot make the service
//! reach into its own network (SSRF, OWASP API Top 10 #7).
//!
//! - Loopback, private, shared (CGNAT), link-local, multicast, broadcast,
//!   unspecified and other reserved addresses are refused unless
//!   `--fetch-allow` / `USERSTREAM_FETCH_ALLOW` (host names or CIDRs,
//!   comma-separated) names them.
//! - The rule is checked on the address of **every connection**: the client's
//!   resolver refuses a name that resolves to a forbidden address, so a name
//!   that answers differently the second time (DNS rebinding) gains nothing,
//!   and a redirect is checked like the first request. IP literals, which no
//!   resolver sees, are checked before the request and on every redirect.
//! - No proxy from the environment is used (it would connect for us).
//! - Every fetch has a byte limit and a time limit.
//!
//! [`Fetcher::check`] runs the same rule when a request is validated, so a
//! refusal is a 400 that names the rule before any request is sent.

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Redirects followed before a fetch fails.
const MAX_REDIRECTS: usize = 5;
/// Longest a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exceptions `--fetch-allow` opens: host names (exact, any case) and
/// networks (`10.0.0.0/8`, or one address).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FetchAllow {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl FromStr for FetchAllow {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut allow = FetchAllow::default();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(net) = item.parse::<IpNet>() {
                allow.nets.push(net);
            } else if let Ok(ip) = item.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                allow.nets.push(IpNet::from(ip));
            } else if item.contains('/') || !item.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                return Err(format!("{item:?} is neither a host name nor an address or CIDR"));
            } else {
                allow.hosts.push(item.to_ascii_lowercase());
            }
        }
        Ok(allow)
    }
}

impl FetchAllow {
    fn host_allowed(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host.trim_end_matches('.')))
    }

    /// Why `ip` may not be reached from `host`, or `None` when it may.
    fn refusal(&self, host: &str, ip: IpAddr) -> Option<Refused> {
        let ip = canonical(ip);
        if self.host_allowed(host) || self.nets.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        forbidden_class(ip).map(|class| Refused { host: host.to_string(), ip, class })
    }
}

/// An IPv4 address carried in IPv6 (`::ffff:127.0.0.1`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The class of addresses `ip` belongs to when that class is refused.
fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() {
                Some("broadcast")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if a >= 240 || (a == 192 && b == 0 && v4.octets()[2] == 0) || (a == 198 && (b == 18 || b == 19)) {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if v6.is_unicast_link_local() {
                Some("link-local")
            } else if v6.is_unique_local() {
                Some("private")
            } else {
                None
            }
        }
    }
}

/// A connection the rule forbids.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    host: String,
    ip: IpAddr,
    class: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_err() {
            write!(f, "{host} is {}, ", self.ip)?;
        } else {
            write!(f, "{} is ", self.ip)?;
        }
        write!(
            f,
            "a {} address: fetches may not reach loopback, private, link-local, multicast or reserved addresses \
             (allow it with --fetch-allow)",
            self.class
        )
    }
}

impl std::error::Error for Refused {}

/// Why a fetch did not deliver the file. The text is safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} is refused: {0}", url = .1)]
    Refused(Refused, String),
    #[error("{0} must be an http:// or https:// URL with a host")]
    NotHttp(String),
    #[error("{url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("{url} is larger than the limit of {max} bytes")]
    TooLarge { url: String, max: u64 },
}

/// The client every fetch goes through.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    allow: Arc<FetchAllow>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("allow", &self.allow).finish_non_exhaustive()
    }
}

/// Resolves names, refusing those with a forbidden address.
struct GuardedResolver(Arc<FetchAllow>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve(&allow, &host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Every address of `host`, or the refusal of the first forbidden one (a
/// name with one forbidden address is refused whole).
async fn resolve(
    allow: &FetchAllow,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if let Some(refused) = addrs.iter().find_map(|a| allow.refusal(host, a.ip())) {
        return Err(Box::new(refused));
    }
    Ok(addrs)
}

/// The IP literal a URL's host is, if it is one.
fn literal(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

impl Fetcher {
    pub fn new(allow: FetchAllow) -> Result<Fetcher, reqwest::Error> {
        let allow = Arc::new(allow);
        let redirects = allow.clone();
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .dns_resolver(Arc::new(GuardedResolver(allow.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                let url = attempt.url().clone();
                if !matches!(url.scheme(), "http" | "https") {
                    return attempt.error(format!("a redirect to {url} leaves http(s)"));
                }
                let refused = literal(&url).and_then(|ip| redirects.refusal(url.host_str().unwrap_or_default(), ip));
                match refused {
                    Some(refused) => attempt.error(refused),
                    None => attempt.follow(),
                }
            }))
            .build()?;
        Ok(Fetcher { client, allow })
    }

    /// Checks `url` against the rule without sending anything: the scheme,
    /// and the addresses its host is (or resolves to now). The connection
    /// is checked again when the fetch runs.
    pub async fn check(&self, url: &str) -> Result<Url, FetchError> {
        let parsed = Url::parse(url.trim()).map_err(|_| FetchError::NotHttp(url.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
            return Err(FetchError::NotHttp(url.to_string()));
        }
        let host = parsed.host_str().unwrap_or_default().to_string();
        if let Some(ip) = literal(&parsed) {
            return match self.allow.refusal(&host, ip) {
                Some(refused) => Err(FetchError::Refused(refused, url.to_string())),
                None => Ok(parsed),
            };
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        match resolve(&self.allow, &host, port).await {
            Ok(_) => Ok(parsed),
            Err(e) => match e.downcast::<Refused>() {
                Ok(refused) => Err(FetchError::Refused(*refused, url.to_string())),
                Err(e) => Err(FetchError::Unreachable { url: url.to_string(), reason: e.to_string() }),
            },
        }
    }

    /// Starts a GET of `url` (checked first), to be read within `timeout`
    /// and `max_bytes`.
    pub async fn get(&self, url: &str, max_bytes: u64, timeout: Duration) -> Result<Download, FetchError> {
        let parsed = self.check(url).await?;
        let response = self.client.get(parsed).timeout(timeout).send().await.map_err(|e| failed(url, &e))?;
        if !response.status().is_success() {
            return Err(FetchError::Status { url: url.to_string(), status: response.status() });
        }
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(FetchError::TooLarge { url: url.to_string(), max: max_bytes });
        }
        Ok(Download { url: url.to_string(), response, max_bytes, read: 0 })
    }

    /// The whole body of `url`, within the limits.
    pub async fn bytes(&self, url: &str, max_bytes: u64, timeout: Duration) -> Result<Vec<u8>, FetchError> {
        let mut download = self.get(url, max_bytes, timeout).await?;
        let mut body = Vec::new();
        while let Some(chunk) = download.chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A refusal found deep in a client error (the resolver's or a redirect's),
/// or the error as the reason the URL is unreachable.
fn failed(url: &str, error: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return FetchError::Refused(refused.clone(), url.to_string());
        }
        source = e.source();
    }
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        reason = format!("{reason}: {e}");
        source = e.source();
    }
    FetchError::Unreachable { url: url.to_string(), reason }
}

/// A response being read, cut off past its byte limit.
pub struct Download {
    url: String,
    response: reqwest::Response,
    max_bytes: u64,
    read: u64,
}

impl Download {
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, FetchError> {
        let chunk = self.response.chunk().await.map_err(|e| failed(&self.url, &e))?;
        if let Some(c) = &chunk {
            self.read += c.len() as u64;
            if self.read > self.max_bytes {
                return Err(FetchError::TooLarge { url: self.url.clone(), max: self.max_bytes });
            }
        }
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_internal_class_is_refused_and_public_addresses_pass() {
        let allow = FetchAllow::default();
        for (ip, class) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private"),
            ("ff02::1", "multicast"),
            ("::", "unspecified"),
        ] {
            let refused = allow.refusal("h", ip.parse().expect("an address")).expect(ip);
            assert_eq!(refused.class, class, "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1", "100.128.0.1"] {
            assert_eq!(allow.refusal("h", ip.parse().expect("an address")), None, "{ip}");
        }
    }

    #[test]
    fn fetch_allow_opens_hosts_and_networks_and_refuses_garbage() {
        let allow: FetchAllow = "files.internal, 10.0.0.0/8,127.0.0.1,[::1]".parse().expect("a list");
        assert_eq!(allow.refusal("files.internal", "192.168.0.9".parse().expect("ip")), None);
        assert_eq!(allow.refusal("FILES.internal.", "192.168.0.9".parse().expect("ip")), None);
        assert_eq!(allow.refusal("x", "10.200.0.1".parse().expect("ip")), None);
        assert_eq!(allow.refusal("x", "127.0.0.1".parse().expect("ip")), None);
        assert_eq!(allow.refusal("x", "::1".parse().expect("ip")), None);
        assert!(allow.refusal("x", "127.0.0.2".parse().expect("ip")).is_some());
        assert!(allow.refusal("other.internal", "192.168.0.9".parse().expect("ip")).is_some());
        for bad in ["10.0.0.0/33", "a b", "http://x"] {
            assert!(bad.parse::<FetchAllow>().is_err(), "{bad}");
        }
        assert_eq!("".parse::<FetchAllow>(), Ok(FetchAllow::default()));
    }

    #[tokio::test]
    async fn check_refuses_literals_names_and_other_schemes_before_sending() {
        let fetcher = Fetcher::new(FetchAllow::default()).expect("a client");
        for url in
            ["http://127.0.0.1:1/x.csv", "http://[::1]/x", "https://localhost/x", "http://169.254.169.254/latest"]
        {
            let err = fetcher.check(url).await.expect_err(url);
            assert!(matches!(err, FetchError::Refused(..)), "{url}: {err}");
            assert!(err.to_string().contains("--fetch-allow"), "{err}");
        }
        for url in ["ftp://example.com/x", "file:///etc/passwd", "http://", "not a url", "gopher://127.0.0.1/"] {
            assert!(matches!(fetcher.check(url).await, Err(FetchError::NotHttp(_))), "{url}");
        }
    }
}

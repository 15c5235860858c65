//! The URL policy of webhooks (SSRF): which URLs a webhook may have and which addresses a
//! delivery may connect to. One rule for the API (at creation, [`UrlPolicy::check_at_creation`])
//! and the worker (at delivery, after DNS resolution: [`UrlPolicy::check_ip`] through the
//! filtering resolver of [`crate::client`]).
//!
//! Refused unless an allowed CIDR block names them: loopback, private (RFC 1918), shared
//! (CGNAT, RFC 6598), link-local (incl. the cloud metadata address 169.254.169.254), unique
//! local, unspecified, multicast, broadcast and the other reserved IPv4 blocks, documentation and
//! benchmarking ranges, and IPv6 forms that embed a refused IPv4 address (mapped, compatible,
//! NAT64, 6to4).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use url::Url;

/// Longest wait for the resolver when a webhook is created.
pub const CREATION_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why an address is refused (a stable name: the API's message, the delivery's error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT).
    Shared,
    /// 169.254.0.0/16 (cloud metadata), fe80::/10.
    LinkLocal,
    /// fc00::/7 (and the deprecated site-local fec0::/10).
    UniqueLocal,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32.
    Documentation,
    /// 198.18.0.0/15, 2001:2::/48.
    Benchmarking,
    /// The other special-purpose blocks (192.0.0/24, 240/4, 100::/64, Teredo, ...).
    Reserved,
}

impl AddressClass {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::Shared => "shared",
            Self::LinkLocal => "link_local",
            Self::UniqueLocal => "unique_local",
            Self::Unspecified => "unspecified",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Reserved => "reserved",
        }
    }
}

/// A URL the policy refuses, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a URL, or one without a host.
    #[error("not an absolute http(s) URL: {0}")]
    Malformed(String),
    /// A scheme other than http and https.
    #[error("scheme `{0}` not allowed: use http or https")]
    Scheme(String),
    /// `user:password@` in the URL (credentials belong in the secret, not the URL).
    #[error("credentials in the URL are not allowed")]
    UserInfo,
    /// The address (literal, or what the name resolves to) is in a refused block.
    #[error("{ip} is a {} address", .class.as_str())]
    Address {
        /// The refused address.
        ip: IpAddr,
        /// Its block.
        class: AddressClass,
    },
    /// The host name resolves only to refused addresses.
    #[error("{host} resolves only to refused addresses ({})", .class.as_str())]
    Resolves {
        /// The host name.
        host: String,
        /// The block of the first refused address.
        class: AddressClass,
    },
}

impl Refusal {
    /// True when the URL is well formed but points at a refused address (the API's
    /// `private_address` code), false for a malformed URL.
    pub fn is_address(&self) -> bool {
        matches!(self, Self::Address { .. } | Self::Resolves { .. })
    }
}

/// A CIDR block of the allow list: `127.0.0.0/8`, `fd00::/8`, or a bare address (one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(|net| Self(net.trunc()))
            .map_err(|_| format!("`{s}` is not a CIDR block like 10.0.0.0/8 or fd00::/8"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A comma list of [`Cidr`] blocks (`WEBHOOK_ALLOW_PRIVATE_CIDRS`); empty entries, and an empty
/// list, are allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl FromStr for CidrList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

/// The policy: the refused blocks, less the allowed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    allowed: Vec<Cidr>,
}

impl UrlPolicy {
    /// Refuse every special block except those in `allowed` (e.g. `127.0.0.0/8` in tests, a
    /// private network whose receivers are trusted).
    pub fn new(allowed: Vec<Cidr>) -> Self {
        Self { allowed }
    }

    /// `Ok` when a delivery may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let embedded = embedded_ipv4(ip);
        let allowed = |ip: IpAddr| self.allowed.iter().any(|c| c.contains(ip));
        if allowed(ip) || embedded.is_some_and(|v4| allowed(IpAddr::V4(v4))) {
            return Ok(());
        }
        match classify(ip) {
            Some(class) => Err(Refusal::Address { ip, class }),
            None => Ok(()),
        }
    }

    /// The syntactic checks of a URL (http or https, a host, no user info) and, when the host
    /// is an IP literal, [`Self::check_ip`]. Host names are left to the resolver.
    pub fn check_url(&self, raw: &str) -> Result<Url, Refusal> {
        let url = Url::parse(raw).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal::Scheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::UserInfo);
        }
        match url.host() {
            None => return Err(Refusal::Malformed("no host".into())),
            Some(url::Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4))?,
            Some(url::Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6))?,
            Some(url::Host::Domain(_)) => {}
        }
        Ok(url)
    }

    /// The check when a webhook is created or changed: [`Self::check_url`], and a host name
    /// that resolves only to refused addresses is refused too. A name that does not resolve
    /// (yet), or not within [`CREATION_LOOKUP_TIMEOUT`], is accepted: the delivery checks
    /// again, after its own resolution.
    pub async fn check_at_creation(&self, raw: &str) -> Result<Url, Refusal> {
        let url = self.check_url(raw)?;
        if let Some(url::Host::Domain(host)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(80);
            let lookup = tokio::net::lookup_host((host, port));
            if let Ok(Ok(addrs)) = tokio::time::timeout(CREATION_LOOKUP_TIMEOUT, lookup).await {
                let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                self.check_resolved(host, &ips)?;
            }
        }
        Ok(url)
    }

    /// The addresses of `ips` a delivery may use; a refusal when there are some and none
    /// passes.
    pub fn check_resolved(&self, host: &str, ips: &[IpAddr]) -> Result<Vec<IpAddr>, Refusal> {
        let mut first_refused = None;
        let allowed: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| match self.check_ip(*ip) {
                Ok(()) => true,
                Err(Refusal::Address { class, .. }) => {
                    first_refused.get_or_insert(class);
                    false
                }
                Err(_) => false,
            })
            .collect();
        match first_refused {
            Some(class) if allowed.is_empty() => Err(Refusal::Resolves {
                host: host.to_owned(),
                class,
            }),
            _ => Ok(allowed),
        }
    }
}

/// The IPv4 address an IPv6 address stands for, where the IPv6 form is only a carrier of one:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated), NAT64
/// (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    // `::` and `::1` are IPv6's own unspecified and loopback, not compatible forms.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(a, b, c, d), len)
}

/// The refused IPv4 blocks (IANA special-purpose registry), most specific first.
const V4_BLOCKS: [((Ipv4Addr, u8), AddressClass); 16] = [
    (v4(255, 255, 255, 255, 32), AddressClass::Broadcast),
    (v4(0, 0, 0, 0, 8), AddressClass::Unspecified),
    (v4(10, 0, 0, 0, 8), AddressClass::Private),
    (v4(100, 64, 0, 0, 10), AddressClass::Shared),
    (v4(127, 0, 0, 0, 8), AddressClass::Loopback),
    (v4(169, 254, 0, 0, 16), AddressClass::LinkLocal),
    (v4(172, 16, 0, 0, 12), AddressClass::Private),
    (v4(192, 0, 0, 0, 24), AddressClass::Reserved),
    (v4(192, 0, 2, 0, 24), AddressClass::Documentation),
    (v4(192, 88, 99, 0, 24), AddressClass::Reserved),
    (v4(192, 168, 0, 0, 16), AddressClass::Private),
    (v4(198, 18, 0, 0, 15), AddressClass::Benchmarking),
    (v4(198, 51, 100, 0, 24), AddressClass::Documentation),
    (v4(203, 0, 113, 0, 24), AddressClass::Documentation),
    (v4(224, 0, 0, 0, 4), AddressClass::Multicast),
    (v4(240, 0, 0, 0, 4), AddressClass::Reserved),
];

/// The refused IPv6 blocks, most specific first (the IPv4 carriers are checked by their
/// embedded address).
const V6_BLOCKS: [(&str, AddressClass); 11] = [
    ("::/128", AddressClass::Unspecified),
    ("::1/128", AddressClass::Loopback),
    ("100::/64", AddressClass::Reserved),
    ("2001:2::/48", AddressClass::Benchmarking),
    ("2001::/32", AddressClass::Reserved),
    ("2001:db8::/32", AddressClass::Documentation),
    ("3fff::/20", AddressClass::Documentation),
    ("fc00::/7", AddressClass::UniqueLocal),
    ("fe80::/10", AddressClass::LinkLocal),
    ("fec0::/10", AddressClass::UniqueLocal),
    ("ff00::/8", AddressClass::Multicast),
];

/// The refused block `ip` is in, if any.
fn classify(ip: IpAddr) -> Option<AddressClass> {
    if let Some(v4) = embedded_ipv4(ip) {
        return classify_v4(v4);
    }
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    V4_BLOCKS.iter().find_map(|((net, len), class)| {
        Ipv4Net::new(*net, *len)
            .expect("valid prefix")
            .contains(&ip)
            .then_some(*class)
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    V6_BLOCKS.iter().find_map(|(net, class)| {
        net.parse::<Ipv6Net>()
            .expect("valid block")
            .contains(&ip)
            .then_some(*class)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &UrlPolicy, url: &str) -> Refusal {
        policy.check_url(url).unwrap_err()
    }

    fn class(policy: &UrlPolicy, url: &str) -> &'static str {
        match refused(policy, url) {
            Refusal::Address { class, .. } => class.as_str(),
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn special_ipv4_blocks_are_refused_by_class() {
        let p = UrlPolicy::default();
        for (url, expected) in [
            ("http://127.0.0.1/", "loopback"),
            ("http://127.255.0.9:8080/hook", "loopback"),
            ("http://10.0.0.1/", "private"),
            ("http://172.16.0.1/", "private"),
            ("http://172.31.255.255/", "private"),
            ("http://192.168.1.1/", "private"),
            ("http://100.64.0.1/", "shared"),
            ("http://100.127.255.255/", "shared"),
            ("http://169.254.169.254/latest/meta-data/", "link_local"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://224.0.0.1/", "multicast"),
            ("http://255.255.255.255/", "broadcast"),
            ("http://192.0.2.10/", "documentation"),
            ("http://198.51.100.1/", "documentation"),
            ("http://203.0.113.7/", "documentation"),
            ("http://198.18.0.1/", "benchmarking"),
            ("http://198.19.255.1/", "benchmarking"),
            ("http://240.0.0.1/", "reserved"),
            ("http://192.0.0.8/", "reserved"),
            // Shorthand forms the URL parser normalizes: still loopback / metadata.
            ("http://2130706433/", "loopback"),
            ("http://0x7f.1/", "loopback"),
            ("http://0251.0376.0251.0376/", "link_local"),
        ] {
            assert_eq!(class(&p, url), expected, "{url}");
        }
    }

    #[test]
    fn special_ipv6_blocks_and_ipv4_carriers_are_refused() {
        let p = UrlPolicy::default();
        for (url, expected) in [
            ("http://[::1]/", "loopback"),
            ("http://[::]/", "unspecified"),
            ("http://[fe80::1]/", "link_local"),
            ("http://[fc00::1]/", "unique_local"),
            ("http://[fd12:3456::1]/", "unique_local"),
            ("http://[ff02::1]/", "multicast"),
            ("http://[2001:db8::1]/", "documentation"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://[::ffff:169.254.169.254]/", "link_local"),
            ("http://[::ffff:a00:1]/", "private"),
            ("http://[::10.0.0.1]/", "private"),
            ("http://[64:ff9b::a9fe:a9fe]/", "link_local"),
            ("http://[2002:c0a8:0101::1]/", "private"),
        ] {
            assert_eq!(class(&p, url), expected, "{url}");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_syntactic_check() {
        let p = UrlPolicy::default();
        for url in [
            "https://hooks.example.com/gps?x=1",
            "http://93.184.216.34:8443/",
            "https://[2606:4700:4700::1111]/",
            "http://[::ffff:93.184.216.34]/",
            "http://100.128.0.1/",
            "http://172.32.0.1/",
        ] {
            assert!(p.check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn malformed_urls_schemes_and_credentials_are_refused() {
        let p = UrlPolicy::default();
        assert!(matches!(refused(&p, "not a url"), Refusal::Malformed(_)));
        assert!(matches!(refused(&p, "/relative"), Refusal::Malformed(_)));
        assert!(matches!(
            refused(&p, "ftp://example.com/"),
            Refusal::Scheme(_)
        ));
        assert!(matches!(
            refused(&p, "file:///etc/passwd"),
            Refusal::Scheme(_)
        ));
        assert!(matches!(
            refused(&p, "gopher://example.com/"),
            Refusal::Scheme(_)
        ));
        assert!(matches!(
            refused(&p, "https://user:pw@example.com/"),
            Refusal::UserInfo
        ));
        assert!(matches!(
            refused(&p, "https://user@example.com/"),
            Refusal::UserInfo
        ));
        assert!(!refused(&p, "ftp://x/").is_address());
        assert!(refused(&p, "http://10.1.2.3/").is_address());
    }

    #[test]
    fn allowed_blocks_open_exactly_their_range() {
        let p = UrlPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(p.check_url("http://127.0.0.1:9000/").is_ok());
        assert!(p.check_url("http://[::ffff:127.0.0.1]/").is_ok());
        assert!(p.check_url("http://[fd00::5]/").is_ok());
        assert_eq!(class(&p, "http://[::1]/"), "loopback");
        assert_eq!(class(&p, "http://10.0.0.1/"), "private");
        assert_eq!(class(&p, "http://169.254.169.254/"), "link_local");
        let host: UrlPolicy = UrlPolicy::new(vec!["10.1.2.3".parse().unwrap()]);
        assert!(host.check_url("http://10.1.2.3/").is_ok());
        assert_eq!(class(&host, "http://10.1.2.4/"), "private");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn resolved_addresses_are_filtered_and_all_refused_is_a_refusal() {
        let p = UrlPolicy::default();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            p.check_resolved("h", &[local, public]).unwrap(),
            vec![public]
        );
        assert_eq!(
            p.check_resolved("h", &[local]).unwrap_err(),
            Refusal::Resolves {
                host: "h".into(),
                class: AddressClass::Loopback
            }
        );
        assert!(p.check_resolved("h", &[]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_creation_unless_allowed() {
        let err = UrlPolicy::default()
            .check_at_creation("http://localhost:8080/hook")
            .await
            .unwrap_err();
        assert!(err.is_address(), "{err}");
        let open = UrlPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(open
            .check_at_creation("http://localhost:8080/hook")
            .await
            .is_ok());
    }
}

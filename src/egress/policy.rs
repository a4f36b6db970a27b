//! What a sandbox may reach: the job's `host:port` allowlist, and the operator's word on the
//! addresses no job may open by itself (loopback, private, link-local, cloud metadata...).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

/// One `host:port` a job's stage may reach: a DNS name, or an IP literal (refused unless the
/// operator lists that address).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Allow {
    pub host: Host,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// Lowercase, without a trailing dot.
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Allow {
    /// Parses `host:port` (`[v6]:port` for an IPv6 literal); the error says what is wrong.
    pub fn parse(text: &str) -> Result<Allow, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` is not host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{text}`: `{port}` is not a port (1-65535)"))?;
        Ok(Allow {
            host: Host::parse(host).map_err(|why| format!("`{text}`: {why}"))?,
            port,
        })
    }
}

impl Host {
    pub fn parse(text: &str) -> Result<Host, String> {
        if let Some(v6) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return v6
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| format!("`{v6}` is not an IPv6 address"));
        }
        if let Ok(ip) = text.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!("`{text}` is not a host name"));
        }
        // All-numeric names (`2130706433`, `0x7f.1`) are addresses in disguise to some resolvers.
        if name
            .split('.')
            .all(|l| l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x"))
        {
            return Err(format!("`{text}` is a number, not a host name"));
        }
        Ok(Host::Name(name))
    }
}

/// One `host:port` of `[egress] permit`, checked when the config is read.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct PermitEntry(pub Allow);

impl TryFrom<String> for PermitEntry {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Allow::parse(&text).map(PermitEntry)
    }
}

/// `[egress]` in the operator config: what only the operator may open, and the caps.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// The `host:port` pairs a job's allowlist may name; a job naming another is refused
    /// before anything runs. Empty (the default): no job may have network.
    pub permit: Vec<PermitEntry>,
    /// Addresses a job may reach although they are not public (a model API on the LAN, a
    /// test's stand-in on loopback), and IP literals a job may name.
    pub allow_addresses: Vec<IpAddr>,
    /// Names resolved here instead of by DNS, like curl's `--resolve`.
    pub hosts: HashMap<String, IpAddr>,
    /// Connections one stage may open through the proxy. Default 256.
    pub max_connections: usize,
    /// Bytes one stage may move each way through the proxy. Default 256 MiB.
    pub max_bytes: crate::job::ByteSize,
    /// A PEM file of CA certificates the proxy trusts, besides the Mozilla roots, when it opens
    /// TLS to a host a secret is bound to (a model API behind your own CA). Default none.
    pub upstream_ca: Option<std::path::PathBuf>,
}

impl EgressConfig {
    /// Each `hosts` name is a host name as a job would write it (lowercase, no trailing dot).
    pub fn check(&self) -> Result<(), String> {
        for name in self.hosts.keys() {
            match Host::parse(name) {
                Ok(Host::Name(normal)) if &normal == name => {}
                Ok(Host::Name(normal)) => {
                    return Err(format!("hosts: write `{name}` as `{normal}`"));
                }
                Ok(Host::Ip(_)) => {
                    return Err(format!("hosts: `{name}` is an address, not a name"));
                }
                Err(why) => return Err(format!("hosts: {why}")),
            }
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            permit: Vec::new(),
            allow_addresses: Vec::new(),
            hosts: HashMap::new(),
            max_connections: 256,
            max_bytes: crate::job::ByteSize::mib(256),
            upstream_ca: None,
        }
    }
}

/// Why an address is not one any job may reach unless the operator lists it.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let first = v6.segments()[0];
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first == 0x64 && v6.segments()[1] == 0xff9b {
                Some("NAT64, which can reach any IPv4 address")
            } else if first == 0x2001 && v6.segments()[1] == 0xdb8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 0 {
        Some("this network (0.0.0.0/8)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (carrier NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("IETF protocol assignments")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) {
        Some("documentation or benchmarking")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_literals_and_ports() {
        let a = Allow::parse("API.Anthropic.com.:443").unwrap();
        assert_eq!(a.host, Host::Name("api.anthropic.com".into()));
        assert_eq!(a.to_string(), "api.anthropic.com:443");
        assert_eq!(
            Allow::parse("[::1]:8080").unwrap().host,
            Host::Ip("::1".parse().unwrap())
        );
        assert!(matches!(
            Allow::parse("10.0.0.1:80").unwrap().host,
            Host::Ip(_)
        ));
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:99999",
            ":443",
            "exa mple.com:443",
            "-x.com:443",
            "2130706433:80",
            "0x7f.1:80",
            "[nope]:443",
            "a..b:443",
        ] {
            assert!(Allow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_public_addresses_pass_by_default() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.17.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "a cloud metadata address"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared address space (carrier NAT)"),
            ("0.0.0.0", "this network (0.0.0.0/8)"),
            ("255.255.255.255", "multicast or reserved"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "a cloud metadata address"),
            ("fd00:ec2::254", "a cloud metadata address"),
            ("fc00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("64:ff9b::a00:1", "NAT64, which can reach any IPv4 address"),
        ] {
            assert_eq!(non_public(ip.parse().unwrap()), Some(why), "{ip}");
        }
        for ip in ["1.1.1.1", "160.79.104.10", "2607:6bc0::10"] {
            assert_eq!(non_public(ip.parse().unwrap()), None, "{ip}");
        }
    }
}

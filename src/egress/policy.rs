//! What a sandbox may reach: the job's `host:port` allowlist, and the operator's word on the
//! addresses no job may open by itself (loopback, private, link-local, cloud metadata...).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

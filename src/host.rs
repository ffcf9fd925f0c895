//! The host's identity as clients see it: hostname, FQDN and network addresses, which become
//! the server certificate's subject alternative names.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};

/// What the resolver says about the host's fully qualified name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fqdn {
    /// The canonical name, with a dot, other than the hostname and `localhost`.
    Name(String),
    /// The lookup answered: there is no FQDN.
    #[default]
    None,
    /// The lookup failed (no network or DNS yet): whether there is one is unknown, which the
    /// planner must not take for "gone".
    LookupFailed(String),
}

impl Fqdn {
    pub fn name(&self) -> Option<&str> {
        match self {
            Fqdn::Name(n) => Some(n),
            _ => None,
        }
    }
}

impl std::fmt::Display for Fqdn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fqdn::Name(n) => f.write_str(n),
            Fqdn::None => f.write_str("none"),
            Fqdn::LookupFailed(e) => write!(f, "unknown, the lookup failed: {e}"),
        }
    }
}

/// Names and addresses the server certificate must cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostIdentity {
    pub hostname: String,
    pub fqdn: Fqdn,
    /// Non-loopback, non-link-local addresses of the host's interfaces (Docker's own bridges
    /// excepted), with where each was found; `[server]` settings choose among them.
    pub addresses: BTreeMap<IpAddr, AddressOrigin>,
}

/// Where a host address was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressOrigin {
    pub interface: String,
    /// An IPv6 temporary (privacy) address, replaced every day or so (RFC 8981).
    pub temporary: bool,
}

impl HostIdentity {
    /// Reads the identity of the machine this runs on.
    pub fn detect() -> Result<HostIdentity> {
        let hostname = hostname()?;
        let fqdn = match fqdn(&hostname) {
            Fqdn::Name(f) if f == hostname || f == "localhost" => Fqdn::None,
            f => f,
        };
        Ok(HostIdentity {
            hostname,
            fqdn,
            addresses: addresses()?,
        })
    }
}

fn hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        bail!("gethostname failed: {}", std::io::Error::last_os_error());
    }
    let name = CStr::from_bytes_until_nul(&buf)?
        .to_string_lossy()
        .trim()
        .to_string();
    if name.is_empty() {
        bail!("the host has no hostname; set one with hostnamectl");
    }
    Ok(name.to_ascii_lowercase())
}

/// The canonical name of `hostname` from the resolver (getaddrinfo with AI_CANONNAME). "No
/// such name" is an answer (no FQDN); any other failure (EAI_AGAIN when DNS is unreachable at
/// boot, EAI_FAIL, EAI_SYSTEM, ...) is not.
fn fqdn(hostname: &str) -> Fqdn {
    let Ok(node) = CString::new(hostname) else {
        return Fqdn::None;
    };
    // SAFETY: zeroed addrinfo is a valid "no hints" value; fields set below.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = libc::AI_CANONNAME;
    hints.ai_family = libc::AF_UNSPEC;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C strings and out-pointer; freed below.
    let rc = unsafe { libc::getaddrinfo(node.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 || res.is_null() {
        return lookup_error(rc);
    }
    // SAFETY: res is a valid list from getaddrinfo until freeaddrinfo.
    let name = unsafe {
        let canon = (*res).ai_canonname;
        let n = (!canon.is_null())
            .then(|| CStr::from_ptr(canon).to_string_lossy().to_ascii_lowercase());
        libc::freeaddrinfo(res);
        n
    };
    match name.filter(|n| n.contains('.')) {
        Some(n) => Fqdn::Name(n),
        None => Fqdn::None,
    }
}

/// glibc's and musl's "name exists but has no address"; not in the libc crate for Linux.
const EAI_NODATA: i32 = -5;

/// What a getaddrinfo error code means for the FQDN.
fn lookup_error(rc: i32) -> Fqdn {
    if rc == libc::EAI_NONAME || rc == EAI_NODATA {
        return Fqdn::None;
    }
    // SAFETY: gai_strerror returns a static NUL-terminated string for any code.
    let msg = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) };
    Fqdn::LookupFailed(msg.to_string_lossy().into_owned())
}

/// Whether an address belongs in the certificate automatically (loopbacks are added
/// explicitly; link-local ones are useless in a URL and change with the interface).
pub fn is_public_candidate(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Interfaces Docker itself creates (the default bridge, user-defined network bridges, swarm's
/// gateway bridge, container veths): their addresses come and go with Docker networks and are
/// not how clients reach the host, so they never enter the certificate.
pub fn is_docker_interface(name: &str) -> bool {
    name == "docker0"
        || name == "docker_gwbridge"
        || name.starts_with("veth")
        || (name.starts_with("br-")
            && name.len() == 15
            && name[3..].chars().all(|c| c.is_ascii_hexdigit()))
}

/// IPv6 addresses flagged temporary (`IFA_F_TEMPORARY`) in /proc/net/if_inet6, whose lines
/// read `ADDRESS IFINDEX PREFIXLEN SCOPE FLAGS NAME`, all hexadecimal but the name.
pub fn temporary_ipv6(if_inet6: &str) -> BTreeSet<Ipv6Addr> {
    const IFA_F_TEMPORARY: u32 = 0x01;
    if_inet6
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(4)?, 16).ok()?;
            let hex = u128::from_str_radix(f.first()?, 16).ok()?;
            (flags & IFA_F_TEMPORARY != 0).then(|| Ipv6Addr::from(hex))
        })
        .collect()
}

fn addresses() -> Result<BTreeMap<IpAddr, AddressOrigin>> {
    let temporary =
        temporary_ipv6(&std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default());
    let mut out = BTreeMap::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        bail!("getifaddrs failed: {}", std::io::Error::last_os_error());
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur walks the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if !ifa.ifa_addr.is_null() && !is_docker_interface(&ifname) {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            let ip = unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))))
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)))
                    }
                    _ => None,
                }
            };
            if let Some(ip) = ip.filter(is_public_candidate) {
                let temporary = matches!(ip, IpAddr::V6(v6) if temporary.contains(&v6));
                out.insert(
                    ip,
                    AddressOrigin {
                        interface: ifname.to_string(),
                        temporary,
                    },
                );
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_has_a_hostname_and_no_loopback() {
        let h = HostIdentity::detect().unwrap();
        assert!(!h.hostname.is_empty());
        assert!(h.addresses.keys().all(is_public_candidate));
    }

    #[test]
    fn temporary_ipv6_addresses_from_proc() {
        let text = "20010db8000000000000000000000005 02 40 00 00     eth0\n\
                    20010db800000000a1b2c3d4e5f60718 02 40 00 01     eth0\n\
                    fe800000000000000000000000000001 02 40 20 80     eth0\n";
        let t = temporary_ipv6(text);
        assert_eq!(t.len(), 1);
        assert!(t.contains(&"2001:db8::a1b2:c3d4:e5f6:718".parse().unwrap()));
    }

    #[test]
    fn lookup_errors_are_unknown_but_no_such_name_is_an_answer() {
        assert_eq!(lookup_error(libc::EAI_NONAME), Fqdn::None);
        assert!(matches!(
            lookup_error(libc::EAI_AGAIN),
            Fqdn::LookupFailed(_)
        ));
        assert!(matches!(
            lookup_error(libc::EAI_FAIL),
            Fqdn::LookupFailed(_)
        ));
    }

    #[test]
    fn docker_interfaces() {
        for n in [
            "docker0",
            "br-0123456789ab",
            "veth1a2b3c4",
            "docker_gwbridge",
        ] {
            assert!(is_docker_interface(n), "{n}");
        }
        for n in ["eth0", "ens3", "br0", "br-lan", "wlan0"] {
            assert!(!is_docker_interface(n), "{n}");
        }
    }

    #[test]
    fn candidates() {
        assert!(!is_public_candidate(&"127.0.0.1".parse().unwrap()));
        assert!(!is_public_candidate(&"::1".parse().unwrap()));
        assert!(!is_public_candidate(&"fe80::1".parse().unwrap()));
        assert!(!is_public_candidate(&"169.254.1.1".parse().unwrap()));
        assert!(is_public_candidate(&"192.0.2.5".parse().unwrap()));
        assert!(is_public_candidate(&"2001:db8::5".parse().unwrap()));
    }
}

//! Server names to addresses, asynchronously, with hickory-resolver reading
//! /etc/resolv.conf and /etc/hosts. Literals never reach the resolver, and
//! the resolver is only built when a name needs it (so a configuration of
//! addresses never pays its start-up or memory). hickory is the largest
//! part of the applet: about 870 KiB of the release binary, against some
//! 210 KiB for everything else in timesyncd; it rides with the `dns`
//! feature, and a build without it takes addresses only.

use std::net::{IpAddr, SocketAddr};

#[cfg(feature = "dns")]
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig};
#[cfg(feature = "dns")]
use hickory_resolver::net::runtime::TokioRuntimeProvider;
#[cfg(feature = "dns")]
use hickory_resolver::{Resolver, TokioResolver};

/// What resolves server names in this build.
#[cfg(feature = "dns")]
pub type SystemResolver = TokioResolver;

/// A build without the `dns` feature: no resolver, addresses only.
#[derive(Debug)]
#[cfg(not(feature = "dns"))]
pub struct SystemResolver;

#[cfg(not(feature = "dns"))]
const NO_DNS: &str =
    "this build resolves no names (built without the dns feature); give an address";

/// An address literal needs no lookup.
pub fn literal(host: &str, port: u16) -> Option<SocketAddr> {
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

/// The system resolver; without a readable /etc/resolv.conf (an
/// initramfs), one that only knows /etc/hosts.
#[cfg(feature = "dns")]
pub fn system_resolver() -> Result<TokioResolver, String> {
    let mut builder = match TokioResolver::builder_tokio() {
        Ok(builder) => builder,
        Err(e) => {
            tracing::info!(
                "no usable /etc/resolv.conf ({e}); names resolve through /etc/hosts only"
            );
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![]),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let options = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Always;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder
        .build()
        .map_err(|e| format!("cannot set up name resolution: {e}"))
}

#[cfg(not(feature = "dns"))]
pub fn system_resolver() -> Result<SystemResolver, String> {
    Err(NO_DNS.into())
}

/// Every address of `host`, in the resolver's order.
#[cfg(not(feature = "dns"))]
pub async fn lookup(_: &SystemResolver, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    literal(host, port)
        .map(|addr| vec![addr])
        .ok_or_else(|| NO_DNS.into())
}

/// Every address of `host`, in the resolver's order.
#[cfg(feature = "dns")]
pub async fn lookup(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    if let Some(addr) = literal(host, port) {
        return Ok(vec![addr]);
    }
    let found = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    if addrs.is_empty() {
        return Err("no addresses".into());
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_skip_the_resolver() {
        assert_eq!(
            literal("127.0.0.1", 5),
            Some("127.0.0.1:5".parse().unwrap())
        );
        assert_eq!(literal("::1", 7), Some("[::1]:7".parse().unwrap()));
        assert_eq!(literal("localhost", 7), None);
    }

    #[cfg(not(feature = "dns"))]
    #[tokio::test]
    async fn without_dns_names_are_refused_with_the_reason() {
        assert!(system_resolver().unwrap_err().contains("dns feature"));
        let err = lookup(&SystemResolver, "pool.ntp.org", 123)
            .await
            .unwrap_err();
        assert!(err.contains("give an address"), "{err}");
    }

    #[cfg(feature = "dns")]
    #[tokio::test]
    async fn localhost_comes_from_etc_hosts() {
        let resolver = system_resolver().unwrap();
        let addrs = lookup(&resolver, "localhost", 1123).await.unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 1123),
            "{addrs:?}"
        );
    }
}

//! Per-client request rate limits: one token bucket per client (API key name,
//! JWT subject, else IP address), answered with `RATE_LIMITED`. A key may
//! carry its own rate; behind trusted proxies, an anonymous client's address
//! is the one they forwarded.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

/// A sustained rate and the burst above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    /// Zeros are taken as 1 (settings and the keys file refuse them).
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        }
    }

    fn limiter(self) -> DefaultKeyedRateLimiter<Arc<str>> {
        RateLimiter::keyed(Quota::per_second(self.per_second).allow_burst(self.burst))
    }
}

/// Buckets for every client: one keyed limiter for the default rate, and
/// one per distinct rate that keys carry (a handful: one per keys-file
/// line at most), made when first needed.
pub struct ClientLimiter {
    default_rate: Rate,
    default: DefaultKeyedRateLimiter<Arc<str>>,
    own: RwLock<HashMap<Rate, Arc<DefaultKeyedRateLimiter<Arc<str>>>>>,
}

impl ClientLimiter {
    pub fn new(default_rate: Rate) -> Self {
        Self {
            default_rate,
            default: default_rate.limiter(),
            own: RwLock::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when the client must slow down. `rate` is the client's
    /// own, if it has one; else the default applies.
    pub fn check(&self, client: &Arc<str>, rate: Option<Rate>) -> Result<(), Duration> {
        let outcome = match rate.filter(|&r| r != self.default_rate) {
            None => self.default.check_key(client),
            Some(rate) => self.limiter_for(rate).check_key(client),
        };
        outcome.map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn limiter_for(&self, rate: Rate) -> Arc<DefaultKeyedRateLimiter<Arc<str>>> {
        let found = self
            .own
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rate)
            .cloned();
        found.unwrap_or_else(|| {
            self.own
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(rate)
                .or_insert_with(|| Arc::new(rate.limiter()))
                .clone()
        })
    }

    /// Forgets clients whose buckets are full again, so memory stays
    /// bounded, and the limiters of rates nobody is using (a key whose rate
    /// changed, or was removed). A request racing with the removal may find
    /// a fresh bucket once: it is let through, which a flood cannot exploit.
    pub fn forget_idle(&self) {
        self.default.retain_recent();
        self.default.shrink_to_fit();
        let mut own = self.own.write().unwrap_or_else(|p| p.into_inner());
        own.retain(|_, limiter| {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            !limiter.is_empty()
        });
    }
}

/// The proxies (load balancers, Ingress controllers) whose `X-Forwarded-For`
/// is believed. Empty by default: then the TCP peer is the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address. From an untrusted peer, the peer. From a
    /// trusted one, `X-Forwarded-For` (`forwarded_for`: the header's values
    /// in order, each a comma-separated list that proxies append to) is
    /// walked from the right, skipping trusted hops: the first address that
    /// is not a trusted proxy is the client. An entry that is not an address
    /// (nor `address:port`) stops the walk at the last trusted hop, as does
    /// the left end of the list: nothing left of a forged entry is believed.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        let hops = forwarded_for
            .rev()
            .flat_map(|value| value.rsplit(|&b| b == b','));
        for hop in hops {
            let Some(ip) = parse_hop(hop) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The host an anonymous client's address stands for: an IPv6 address
/// counts by its /64 (one host usually holds the whole /64, so rotating
/// within it must not buy fresh rate buckets); IPv4, and IPv4
/// mapped into IPv6, by the address itself.
pub fn client_host(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, or `address:port` (some proxies
/// add the port), surrounding spaces ignored.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_client_over_its_burst_is_told_to_wait_and_others_are_not() {
        let l = ClientLimiter::new(Rate::new(1, 3));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for _ in 0..3 {
            assert!(l.check(&a, None).is_ok());
        }
        let wait = l.check(&a, None).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(l.check(&b, None).is_ok());
    }

    #[test]
    fn a_client_with_its_own_rate_is_held_to_it() {
        let l = ClientLimiter::new(Rate::new(1, 2));
        let (slow, fast, plain): (Arc<str>, Arc<str>, Arc<str>) =
            ("slow".into(), "fast".into(), "plain".into());
        let own_slow = Some(Rate::new(1, 1));
        let own_fast = Some(Rate::new(1000, 50));
        assert!(l.check(&slow, own_slow).is_ok());
        assert!(l.check(&slow, own_slow).is_err());
        for _ in 0..50 {
            assert!(l.check(&fast, own_fast).is_ok());
        }
        // A rate equal to the default shares the default's buckets.
        assert!(l.check(&plain, Some(Rate::new(1, 2))).is_ok());
        assert!(l.check(&plain, None).is_ok());
        assert!(l.check(&plain, None).is_err());
        assert_eq!(l.own.read().unwrap().len(), 2);
    }

    #[test]
    fn idle_limiters_of_own_rates_are_dropped() {
        let l = ClientLimiter::new(Rate::new(1, 2));
        // A burst of 1 at 1000/s is full again after a millisecond.
        let k: Arc<str> = "k".into();
        assert!(l.check(&k, Some(Rate::new(1000, 1))).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        l.forget_idle();
        assert!(l.own.read().unwrap().is_empty());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_ipv4_its_address() {
        let host = |s: &str| client_host(ip(s)).to_string();
        assert_eq!(host("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(host("2001:db8:1:2::1"), host("2001:db8:1:2:ffff::9"));
        assert_ne!(host("2001:db8:1:2::1"), host("2001:db8:1:3::1"));
        assert_eq!(host("203.0.113.9"), "203.0.113.9");
        assert_eq!(host("::ffff:203.0.113.9"), "203.0.113.9");
    }

    fn walk(trusted: &[&str], peer: &str, xff: &[&str]) -> String {
        let proxies = TrustedProxies::new(trusted.iter().map(|n| n.parse().unwrap()).collect());
        proxies
            .client_ip(ip(peer), xff.iter().map(|v| v.as_bytes()))
            .to_string()
    }

    #[test]
    fn the_forwarded_client_is_the_rightmost_untrusted_hop() {
        let t = &["10.0.0.0/8", "fd00::/8"];
        // No trusted proxies, or an untrusted peer: the peer, whatever it says.
        assert_eq!(walk(&[], "10.1.1.1", &["203.0.113.9"]), "10.1.1.1");
        assert_eq!(walk(t, "198.51.100.4", &["203.0.113.9"]), "198.51.100.4");
        // A trusted peer: the rightmost address that is not a trusted proxy.
        assert_eq!(walk(t, "10.1.1.1", &["203.0.113.9"]), "203.0.113.9");
        assert_eq!(
            walk(t, "10.1.1.1", &["1.1.1.1, 203.0.113.9, 10.2.2.2"]),
            "203.0.113.9",
            "a client-supplied entry left of the real one is ignored"
        );
        assert_eq!(
            walk(t, "10.1.1.1", &["1.1.1.1", "203.0.113.9 ,10.2.2.2"]),
            "203.0.113.9",
            "several header lines are one list"
        );
        assert_eq!(
            walk(t, "fd00::1", &["2001:db8::7", "[fd00::2]:8443"]),
            "2001:db8::7"
        );
        assert_eq!(walk(t, "10.1.1.1", &["203.0.113.9:5120"]), "203.0.113.9");
        assert_eq!(
            walk(t, "::ffff:10.1.1.1", &["::ffff:203.0.113.9"]),
            "203.0.113.9",
            "IPv4-mapped addresses are IPv4"
        );
        // Nothing forwarded, or only trusted hops: the last trusted hop.
        assert_eq!(walk(t, "10.1.1.1", &[]), "10.1.1.1");
        assert_eq!(walk(t, "10.1.1.1", &["10.3.3.3, 10.2.2.2"]), "10.3.3.3");
        // A malformed entry stops the walk at the last trusted hop.
        assert_eq!(walk(t, "10.1.1.1", &["203.0.113.9, unknown"]), "10.1.1.1");
        assert_eq!(
            walk(t, "10.1.1.1", &["203.0.113.9, garbage, 10.2.2.2"]),
            "10.2.2.2"
        );
        assert_eq!(walk(t, "10.1.1.1", &["203.0.113.9,"]), "10.1.1.1");
        assert_eq!(walk(t, "10.1.1.1", &[""]), "10.1.1.1");
    }

    proptest! {
        /// Whatever a client writes, the answer is the peer or an address in
        /// the header; and nothing left of the last untrusted hop changes it.
        #[test]
        fn the_walk_never_panics_and_only_believes_trusted_hops(
            forged in "[0-9a-f.:, \\[\\]]{0,60}",
            real in (0u8..=255, 0u8..=255).prop_map(|(a, b)| format!("203.0.{a}.{b}")),
        ) {
            let t = &["10.0.0.0/8"];
            let any = walk(t, "10.1.1.1", &[&forged]);
            let listed = forged
                .split(',')
                .filter_map(|hop| parse_hop(hop.as_bytes()))
                .any(|ip| ip.to_string() == any);
            prop_assert!(any == "10.1.1.1" || listed, "{any}");
            let header = format!("{forged}, {real}, 10.9.9.9");
            prop_assert_eq!(walk(t, "10.1.1.1", &[&header]), real);
        }
    }
}

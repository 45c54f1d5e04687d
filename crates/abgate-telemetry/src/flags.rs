//! Envoy's response flags as a bitset, printed and parsed the way Envoy's access log does.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::str::FromStr;

/// Envoy's response flags (`%RESPONSE_FLAGS%`): what went wrong, or was done, on the way.
///
/// The bits follow Envoy's `ResponseFlag` enum, so [`Display`](fmt::Display) lists the
/// short names in Envoy's order, comma-joined, and `-` when no flag is set, exactly as
/// the `response_flags` label of `istio_requests_total` reads.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResponseFlags(u32);

/// Short names in bit order (bit 0 first), as Envoy prints them.
const NAMES: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

const ALL_BITS: u32 = (1 << NAMES.len()) - 1;

impl ResponseFlags {
    /// No flag: printed `-`.
    pub const NONE: Self = Self(0);
    /// `LH`: the local service failed its health check.
    pub const LH: Self = Self(1 << 0);
    /// `UH`: no healthy upstream host in the cluster.
    pub const UH: Self = Self(1 << 1);
    /// `UT`: upstream request timeout.
    pub const UT: Self = Self(1 << 2);
    /// `LR`: the connection was reset locally.
    pub const LR: Self = Self(1 << 3);
    /// `UR`: the upstream reset the stream.
    pub const UR: Self = Self(1 << 4);
    /// `UF`: upstream connection failure.
    pub const UF: Self = Self(1 << 5);
    /// `UC`: the upstream connection terminated.
    pub const UC: Self = Self(1 << 6);
    /// `UO`: upstream overflow (circuit breaker, connection pool full).
    pub const UO: Self = Self(1 << 7);
    /// `NR`: no route matched.
    pub const NR: Self = Self(1 << 8);
    /// `DI`: the request was delayed by fault injection (not a failure).
    pub const DI: Self = Self(1 << 9);
    /// `FI`: the request was aborted by fault injection.
    pub const FI: Self = Self(1 << 10);
    /// `RL`: rate limited locally.
    pub const RL: Self = Self(1 << 11);
    /// `UAEX`: refused by an external authorization service.
    pub const UAEX: Self = Self(1 << 12);
    /// `RLSE`: the rate limit service failed.
    pub const RLSE: Self = Self(1 << 13);
    /// `DC`: the downstream connection terminated.
    pub const DC: Self = Self(1 << 14);
    /// `URX`: retries (or connect attempts) exhausted.
    pub const URX: Self = Self(1 << 15);
    /// `SI`: stream idle timeout.
    pub const SI: Self = Self(1 << 16);
    /// `IH`: an invalid value in a strictly checked header.
    pub const IH: Self = Self(1 << 17);
    /// `DPE`: downstream protocol error (malformed or oversized request).
    pub const DPE: Self = Self(1 << 18);
    /// `UMSDR`: the upstream stream reached its maximum duration.
    pub const UMSDR: Self = Self(1 << 19);
    /// `RFCF`: response served from a cache filter.
    pub const RFCF: Self = Self(1 << 20);
    /// `NFCF`: no filter configuration found.
    pub const NFCF: Self = Self(1 << 21);
    /// `DT`: a request or connection exceeded its duration timeout.
    pub const DT: Self = Self(1 << 22);
    /// `UPE`: upstream protocol error.
    pub const UPE: Self = Self(1 << 23);
    /// `NC`: no cluster for the route's destination.
    pub const NC: Self = Self(1 << 24);
    /// `OM`: refused by the overload manager.
    pub const OM: Self = Self(1 << 25);
    /// `DF`: DNS resolution failed.
    pub const DF: Self = Self(1 << 26);
    /// `DO`: dropped by overload (drop_overload).
    pub const DO: Self = Self(1 << 27);
    /// `DR`: the downstream reset the stream.
    pub const DR: Self = Self(1 << 28);
    /// `UDO`: dropped unconditionally by overload.
    pub const UDO: Self = Self(1 << 29);

    /// The raw bits (Envoy's `ResponseFlag` values).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Flags from raw bits; bits that name no flag are dropped.
    pub const fn from_bits_truncate(bits: u32) -> Self {
        Self(bits & ALL_BITS)
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is set here.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags and `other`'s.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// These flags without `other`'s.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Sets `other`'s flags.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// The flag with this short name (`"URX"`), if Envoy has one.
    pub fn from_name(name: &str) -> Option<Self> {
        NAMES
            .iter()
            .position(|n| *n == name)
            .map(|bit| Self(1 << bit))
    }

    /// The short names of the flags set, in Envoy's order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        NAMES
            .iter()
            .enumerate()
            .filter(move |(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }

    /// Parses Envoy's form: comma-separated short names in any order (`"URX,UF"`), or `-`
    /// (or nothing) for no flag.
    pub fn parse(text: &str) -> Result<Self, UnknownResponseFlag> {
        let text = text.trim();
        if text.is_empty() || text == "-" {
            return Ok(Self::NONE);
        }
        text.split(',').try_fold(Self::NONE, |acc, part| {
            let part = part.trim();
            Self::from_name(part)
                .map(|flag| acc.union(flag))
                .ok_or_else(|| UnknownResponseFlag(part.to_owned()))
        })
    }
}

/// A response flag name Envoy does not define.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown response flag `{0}`")]
pub struct UnknownResponseFlag(pub String);

impl FromStr for ResponseFlags {
    type Err = UnknownResponseFlag;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

impl BitOr for ResponseFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.insert(rhs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_flags_display_as_dash() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        assert_eq!(ResponseFlags::default(), ResponseFlags::NONE);
    }

    #[test]
    fn flags_display_comma_joined_in_envoy_order() {
        // Envoy prints by bit, whatever order the flags were set in.
        let flags = ResponseFlags::URX | ResponseFlags::UF;
        assert_eq!(flags.to_string(), "UF,URX");
        let flags = ResponseFlags::DI | ResponseFlags::UH | ResponseFlags::NC;
        assert_eq!(flags.to_string(), "UH,DI,NC");
    }

    #[test]
    fn flags_parse_round_trips_display() {
        for (bit, name) in NAMES.iter().enumerate() {
            let flag = ResponseFlags(1 << bit);
            assert_eq!(ResponseFlags::parse(&flag.to_string()), Ok(flag));
            assert_eq!(flag.to_string(), *name);
        }
        // Every pair, and the whole set.
        for a in 0..NAMES.len() {
            for b in 0..NAMES.len() {
                let flags = ResponseFlags((1 << a) | (1 << b));
                assert_eq!(flags.to_string().parse(), Ok(flags));
            }
        }
        let all = ResponseFlags::from_bits_truncate(u32::MAX);
        assert_eq!(all.names().count(), 30);
        assert_eq!(ResponseFlags::parse(&all.to_string()), Ok(all));
        assert_eq!(ResponseFlags::parse("-"), Ok(ResponseFlags::NONE));
        assert_eq!(ResponseFlags::parse(""), Ok(ResponseFlags::NONE));
        assert_eq!(
            ResponseFlags::parse("URX, UF"),
            Ok(ResponseFlags::UF | ResponseFlags::URX)
        );
    }

    #[test]
    fn unknown_flag_is_rejected() {
        assert_eq!(
            ResponseFlags::parse("UF,XX"),
            Err(UnknownResponseFlag("XX".into()))
        );
        assert_eq!(
            ResponseFlags::parse("uf"),
            Err(UnknownResponseFlag("uf".into()))
        );
    }

    #[test]
    fn difference_keeps_only_other_flags() {
        let flags = ResponseFlags::DI | ResponseFlags::UT;
        assert_eq!(flags.difference(ResponseFlags::DI), ResponseFlags::UT);
        assert!(ResponseFlags::DI.difference(ResponseFlags::DI).is_empty());
        assert!(flags.contains(ResponseFlags::DI));
        assert!(!flags.contains(ResponseFlags::UF));
    }
}

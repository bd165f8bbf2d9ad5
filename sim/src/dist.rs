//! Durations and random distributions as scenarios write them.
//!
//! A [`Millis`] is written in a scenario as an integer number of milliseconds
//! or a humantime string (`"250ms"`, `"90s"`, `"1h 30m"`); a negative value
//! (clock skew) as a string with a leading `-`. A [`Dist`] is one of a few
//! named distributions over milliseconds, sampled from the simulator's one
//! seeded RNG.
//!
//! This module must never draw randomness from anywhere but the RNG it is
//! handed, and never use a float result in a way that differs between two
//! runs on the same machine: a [`Dist`] is a pure function of the RNG state.

use std::fmt;

use rand::Rng;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A signed number of milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub i64);

impl Millis {
    pub fn ms(self) -> u64 {
        self.0.max(0) as u64
    }

    pub fn from_secs(s: u64) -> Millis {
        Millis((s * 1000) as i64)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let d = std::time::Duration::from_millis(self.0.unsigned_abs());
        write!(f, "{sign}{}", humantime::format_duration(d))
    }
}

/// Parses `"90s"`, `"-20s"`, `"1h 5m"`, or a bare integer (milliseconds).
pub fn parse_millis(s: &str) -> Result<Millis, String> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest.trim()),
        None => (false, s),
    };
    let ms = if let Ok(n) = body.parse::<u64>() {
        n
    } else {
        humantime::parse_duration(body)
            .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. \"250ms\", \"90s\""))?
            .as_millis() as u64
    };
    let ms = i64::try_from(ms).map_err(|_| format!("{s:?} is too long"))?;
    Ok(Millis(if neg { -ms } else { ms }))
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("milliseconds or a duration string such as \"90s\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                Ok(Millis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                i64::try_from(v)
                    .map(Millis)
                    .map_err(|_| E::custom("duration too long"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                parse_millis(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

/// A distribution over milliseconds. In TOML: `{ const = "50ms" }`,
/// `{ uniform = { min = "10ms", max = "90ms" } }`,
/// `{ normal = { mean = "40ms", std = "10ms" } }` (clamped at the bounds),
/// `{ lognormal = { median = "30s", sigma = 1.0 } }`,
/// `{ exp = { mean = "5m" } }`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Dist {
    Const(Millis),
    Uniform { min: Millis, max: Millis },
    Normal { mean: Millis, std: Millis },
    Lognormal { median: Millis, sigma: f64 },
    Exp { mean: Millis },
}

impl Default for Dist {
    fn default() -> Self {
        Dist::Const(Millis(0))
    }
}

/// Longest value any distribution yields: a day. Bounds the tails so a
/// lognormal draw cannot push an event past the end of the universe.
const CAP_MS: i64 = 24 * 60 * 60 * 1000;

impl Dist {
    pub fn constant(ms: i64) -> Dist {
        Dist::Const(Millis(ms))
    }

    /// One draw, in milliseconds, clamped to ±1 day.
    pub fn sample_signed<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        let v = match *self {
            Dist::Const(m) => m.0,
            Dist::Uniform { min, max } => {
                let (lo, hi) = (min.0.min(max.0), min.0.max(max.0));
                if lo == hi { lo } else { rng.gen_range(lo..=hi) }
            }
            Dist::Normal { mean, std } => {
                (mean.0 as f64 + std.0.max(0) as f64 * standard_normal(rng)).round() as i64
            }
            Dist::Lognormal { median, sigma } => {
                let z = standard_normal(rng);
                (median.0.max(0) as f64 * (sigma.max(0.0) * z).exp()).round() as i64
            }
            Dist::Exp { mean } => {
                // Inverse transform; 1 - u is in (0, 1].
                let u: f64 = rng.r#gen::<f64>();
                (-(1.0 - u).ln() * mean.0.max(0) as f64).round() as i64
            }
        };
        v.clamp(-CAP_MS, CAP_MS)
    }

    /// One non-negative draw, in milliseconds.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        self.sample_signed(rng).max(0) as u64
    }

    /// Rough central value, for documentation and scaling estimates.
    pub fn typical_ms(&self) -> u64 {
        match *self {
            Dist::Const(m) => m.ms(),
            Dist::Uniform { min, max } => ((min.0 + max.0) / 2).max(0) as u64,
            Dist::Normal { mean, .. } => mean.ms(),
            Dist::Lognormal { median, .. } => median.ms(),
            Dist::Exp { mean } => mean.ms(),
        }
    }
}

/// Box–Muller, one value per call (the second is discarded: simpler, and the
/// RNG is cheap).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.r#gen::<f64>(); // (0, 1]
    let u2: f64 = rng.r#gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn durations_parse_both_ways() {
        assert_eq!(parse_millis("250").unwrap(), Millis(250));
        assert_eq!(parse_millis("90s").unwrap(), Millis(90_000));
        assert_eq!(parse_millis("-20s").unwrap(), Millis(-20_000));
        assert_eq!(parse_millis("1h 5m").unwrap(), Millis(3_900_000));
        assert!(parse_millis("soon").is_err());
    }

    #[test]
    fn dists_from_toml() {
        #[derive(Deserialize)]
        struct T {
            a: Dist,
            b: Dist,
            c: Dist,
            d: Dist,
            e: Dist,
        }
        let t: T = toml::from_str(
            r#"
            a = { const = "50ms" }
            b = { uniform = { min = 10, max = "90ms" } }
            c = { normal = { mean = "40ms", std = "10ms" } }
            d = { lognormal = { median = "30s", sigma = 1.0 } }
            e = { exp = { mean = "5m" } }
            "#,
        )
        .unwrap();
        assert_eq!(t.a, Dist::constant(50));
        assert_eq!(
            t.b,
            Dist::Uniform {
                min: Millis(10),
                max: Millis(90)
            }
        );
        let mut rng = StdRng::seed_from_u64(7);
        for d in [&t.a, &t.b, &t.c, &t.d, &t.e] {
            for _ in 0..1000 {
                let v = d.sample(&mut rng);
                assert!(v <= CAP_MS as u64);
            }
        }
        let mean = (0..20_000).map(|_| t.e.sample(&mut rng)).sum::<u64>() as f64 / 20_000.0;
        assert!((mean - 300_000.0).abs() < 15_000.0, "{mean}");
        let mut v: Vec<u64> = (0..20_001).map(|_| t.d.sample(&mut rng)).collect();
        v.sort_unstable();
        let median = v[10_000] as f64;
        assert!((median - 30_000.0).abs() < 1_500.0, "{median}");
    }
}

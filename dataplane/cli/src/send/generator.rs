//! Realistic generated logs (the shapes of ../shared/bench/scripts/gen_logs.py): weighted
//! services, levels 60/25/10/5 % INFO/DEBUG/WARN/ERROR, messages with ids and durations, trace
//! ids shared by a few entries. Pools are built once so generation stays far cheaper than
//! sending.

use std::collections::BTreeMap;

use logcluster_proto::{FieldValue, Level, LogEntry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SERVICES: [(&str, u32); 10] = [
    ("api-gateway", 14),
    ("checkout", 6),
    ("search", 7),
    ("auth", 8),
    ("payment", 5),
    ("inventory", 5),
    ("db-proxy", 6),
    ("cache", 4),
    ("notification", 3),
    ("scheduler", 2),
];
const PATHS: [&str; 6] = [
    "/api/v1/orders",
    "/api/v2/cart/items",
    "/api/v1/search",
    "/api/v1/users/profile",
    "/api/v1/checkout/session",
    "/healthz",
];
const UPSTREAMS: [&str; 4] = [
    "inventory-svc:8080",
    "payment-svc:8443",
    "redis-main:6379",
    "postgres-primary:5432",
];

/// Generates entries; deterministic for a seed.
pub struct Generator {
    rng: StdRng,
    service_weights: u32,
    hosts: Vec<Vec<String>>,
    trace: String,
    trace_left: u32,
    forced_service: Option<String>,
}

impl Generator {
    pub fn new(seed: u64, forced_service: Option<String>) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let hosts = SERVICES
            .iter()
            .map(|(name, _)| {
                (0..3)
                    .map(|_| {
                        format!(
                            "{name}-{:06x}-{:05x}",
                            rng.random::<u32>() & 0xff_ffff,
                            rng.random::<u32>() & 0xf_ffff
                        )
                    })
                    .collect()
            })
            .collect();
        Generator {
            rng,
            service_weights: SERVICES.iter().map(|(_, w)| w).sum(),
            hosts,
            trace: String::new(),
            trace_left: 0,
            forced_service,
        }
    }

    /// One entry stamped `now` (Unix ns).
    pub fn next_entry(&mut self, now: i64) -> LogEntry {
        let mut pick = self.rng.random_range(0..self.service_weights);
        let mut index = 0;
        for (i, (_, weight)) in SERVICES.iter().enumerate() {
            if pick < *weight {
                index = i;
                break;
            }
            pick -= weight;
        }
        let roll = self.rng.random_range(0..100);
        let level = match roll {
            0..60 => Level::Info,
            60..85 => Level::Debug,
            85..95 => Level::Warn,
            _ => Level::Error,
        };
        if self.trace_left == 0 {
            self.trace = format!(
                "{:016x}{:016x}",
                self.rng.random::<u64>(),
                self.rng.random::<u64>()
            );
            self.trace_left = self.rng.random_range(1..=8);
        }
        self.trace_left -= 1;
        let path = PATHS[self.rng.random_range(0..PATHS.len())];
        let duration = self.rng.random_range(1..400);
        let mut fields = BTreeMap::new();
        let message = match level {
            Level::Info => {
                fields.insert("duration_ms".to_string(), FieldValue::int(duration));
                fields.insert("http.status".to_string(), FieldValue::int(200));
                format!(
                    "GET {path} 200 {duration}ms bytes={}",
                    self.rng.random_range(80..90_000)
                )
            }
            Level::Debug => format!(
                "cache hit key=product:{} ttl={}s",
                self.rng.random_range(1..99_999),
                self.rng.random_range(5..600)
            ),
            Level::Warn => {
                let slow = self.rng.random_range(500..4000);
                fields.insert("duration_ms".to_string(), FieldValue::int(slow));
                format!("slow request GET {path} duration={slow}ms threshold=500ms")
            }
            _ => format!(
                "upstream timeout after {}ms calling {}{path}",
                [1000, 3000, 5000][self.rng.random_range(0..3)],
                UPSTREAMS[self.rng.random_range(0..UPSTREAMS.len())]
            ),
        };
        let service = match &self.forced_service {
            Some(service) => service.clone(),
            None => SERVICES[index].0.to_string(),
        };
        LogEntry {
            timestamp: now,
            service,
            level: level as i32,
            message,
            host: self.hosts[index][self.rng.random_range(0..3)].clone(),
            trace_id: self.trace.clone(),
            fields,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_documented_mix_and_seeds_repeat() {
        let mut generator = Generator::new(7, None);
        let mut counts = [0usize; 7];
        for _ in 0..20_000 {
            counts[generator.next_entry(0).level as usize] += 1;
        }
        let share = |level: Level| counts[level as usize] as f64 / 20_000.0;
        assert!((share(Level::Info) - 0.60).abs() < 0.03);
        assert!((share(Level::Debug) - 0.25).abs() < 0.03);
        assert!((share(Level::Warn) - 0.10).abs() < 0.02);
        assert!((share(Level::Error) - 0.05).abs() < 0.02);
        let a: Vec<_> = (0..5)
            .map(|_| Generator::new(1, None).next_entry(5))
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "same seed, same entry");
        let forced = Generator::new(3, Some("only".into())).next_entry(0);
        assert_eq!(forced.service, "only");
    }
}

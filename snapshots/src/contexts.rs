//! Seeded generation of evaluation contexts. The mix is deliberately hostile: non-ASCII and
//! numeric unit values, empty and missing units, attributes of the wrong type, nested objects
//! and nulls that must be ignored.

use serde_json::Value as Json;

/// SplitMix64: tiny, fast and fixed forever, so the vectors never change with a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant for test data).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A context as ordered `(name, value)` pairs; written in this order.
pub type Attributes = Vec<(String, Json)>;

pub fn context(rng: &mut Rng) -> Attributes {
    let mut attrs: Attributes = Vec::new();
    let mut put = |name: &str, value: Json| attrs.push((name.to_string(), value));
    let n = rng.below(1_000_000);
    let user: Option<Json> = match rng.below(100) {
        0..=1 => None,
        2 => Some(Json::from("")),
        3 => Some(Json::from(n as i64)),
        4 => Some(Json::from(12_345)),
        5 => Some(Json::from(1.5)),
        6 => Some(Json::from(true)),
        7..=14 => {
            let forms = [
                "ユーザー",
                "émilie-",
                "用户",
                "🦎-",
                "Ωμέγα",
                "José María ",
                "Zoë_",
            ];
            let form = *rng.pick(&forms);
            Some(Json::from(if rng.chance(10) {
                "ユーザー7".to_string()
            } else {
                format!("{form}{n}")
            }))
        }
        15..=19 => Some(Json::from(
            *rng.pick(&["qa-alice", "qa-bob", "qa-held", "12345"]),
        )),
        20..=59 => Some(Json::from(uuid_like(rng))),
        _ => Some(Json::from(format!("user-{n}"))),
    };
    if let Some(user) = user {
        put("user_id", user);
    }
    if rng.chance(90) {
        put(
            "device_id",
            Json::from(format!("dev-{:012x}", rng.next_u64() >> 16)),
        );
    }
    put("company_id", Json::from(format!("co-{}", rng.below(40))));
    if rng.chance(95) {
        let cities = [
            "paris",
            "london",
            "tokyo",
            "são paulo",
            "new york",
            "berlin",
            "münchen",
            "北京",
            "lagos",
        ];
        put("city", Json::from(*rng.pick(&cities)));
    }
    match rng.below(100) {
        0..=84 => {
            let countries = ["US", "CA", "MX", "GB", "DE", "FR", "IT", "JP", "BR", "IN"];
            put("country", Json::from(*rng.pick(&countries)));
        }
        85..=89 => put("country", Json::from(1)),
        90..=92 => put("country", Json::Null),
        _ => {}
    }
    if rng.chance(90) {
        put(
            "plan",
            Json::from(*rng.pick(&["free", "pro", "enterprise"])),
        );
    }
    match rng.below(10) {
        0 => put("age", Json::from("31")),
        1 => {}
        2 => put("age", Json::from(*rng.pick(&[18, 21, 30, 65]))),
        _ => put("age", Json::from(13 + rng.below(68) as i64)),
    }
    match rng.below(10) {
        0 => put("score", Json::from(0.5)),
        1 => {}
        _ => put("score", Json::from(rng.below(101) as f64 / 100.0)),
    }
    match rng.below(10) {
        0 => put("beta", Json::from("true")),
        1..=2 => {}
        _ => put("beta", Json::from(rng.chance(40))),
    }
    if rng.chance(90) {
        let versions = [
            "1.9",
            "2.0.0",
            "2.3.0",
            "2.3",
            "2.3.0-beta.2",
            "2.3.0-beta.10",
            "2.3.0-alpha",
            "2.3.1",
            "v2.10.0",
            "2.10.0-rc.1",
            "3.0.0",
            "3.1.0+build.7",
            "garbage",
            "2.3.0-",
            "10.0.0",
        ];
        put("app_version", Json::from(*rng.pick(&versions)));
    }
    if rng.chance(70) {
        let email = match rng.below(4) {
            0 => format!("a{n}@example.com"),
            1 => format!("b{n}@corp.example.com"),
            2 => "c@corp.io".to_string(),
            _ => String::new(),
        };
        put("email", Json::from(email));
    }
    // The last is longer than the 256 bytes an exposure attribute may have.
    let long_agent = format!(
        "Mozilla/5.0 (X11; Linux x86_64) {}",
        "Plugin/1.0 ".repeat(24)
    );
    let agents = [
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
        "curl/8.4.0",
        long_agent.as_str(),
    ];
    put("user_agent", Json::from(*rng.pick(&agents)));
    put(
        "platform",
        Json::from(*rng.pick(&["ios", "android", "web"])),
    );
    match rng.below(6) {
        0 => put("tags", Json::Array(vec![])),
        1 => put("tags", Json::from(vec!["vip"])),
        2 => put("tags", Json::from(vec!["beta_tester", "staff"])),
        3 => put("tags", Json::Array(vec![Json::from("vip"), Json::from(3)])),
        4 => put("tags", Json::from(vec!["x", "beta_tester"])),
        _ => {}
    }
    if rng.chance(80) {
        let dates = [
            "2023-11-30",
            "2024-01-15",
            "2024-06-01",
            "2024-06-02",
            "2025-02-28",
        ];
        put("signup_date", Json::from(*rng.pick(&dates)));
    }
    if rng.chance(5) {
        put("nested", serde_json::json!({"ignored": [1, 2]}));
    }
    attrs
}

fn uuid_like(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// Writes the pairs as a JSON object in their order, independent of serde_json's map type.
pub fn to_json_text(attrs: &Attributes) -> String {
    let fields: Vec<String> = attrs
        .iter()
        .map(|(name, value)| format!("{}:{}", Json::from(name.as_str()), value))
        .collect();
    format!("{{{}}}", fields.join(","))
}

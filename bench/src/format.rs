//! How the figures print: thousands separators, two decimals for small
//! values, bytes as MiB.

/// 1234567.8 -> "1,234,568".
pub fn count(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Counts with thousands separators, small values with two decimals.
pub fn number(value: f64) -> String {
    if value.abs() >= 1000.0 {
        count(value)
    } else {
        format!("{value:.2}")
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

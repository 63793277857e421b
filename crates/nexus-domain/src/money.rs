//! Amounts of money, carried as JSON numbers (`f64`).

/// Rounds away binary floating-point noise, so that `0.1 + 0.2` is `0.3`: totals print as the
/// decimals a client would write, and a charge of exactly the remaining credit is not refused
/// because the sum came out a hair above the limit. Nine decimals is finer than any currency's
/// minor unit, so no real amount is changed.
pub(crate) fn round(amount: f64) -> f64 {
    (amount * 1e9).round() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_removes_float_noise_only() {
        assert_eq!(round(0.1 + 0.2), 0.3);
        assert_eq!(round(19.99 * 3.0), 59.97);
        assert_eq!(round(0.000_000_001), 0.000_000_001);
        assert_eq!(round(1234.5), 1234.5);
    }
}

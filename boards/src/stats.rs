//! Summary statistics shared by the measurements (profile, bench, bench-compare).

/// The median of `values`: the middle value of the sorted values, or the mean of the two
/// middle ones for an even count; NaN for no values. NaNs sort last (`f64::total_cmp`).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
    }
}

/// The smallest of `values` (a time's best run: the machine at its quietest); NaN for no
/// values or when one is NaN.
pub fn least(values: &[f64]) -> f64 {
    match values.iter().copied().reduce(f64::min) {
        Some(least) if values.iter().all(|v| !v.is_nan()) => least,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::{least, median};

    fn check(values: &[f64], expected: f64) {
        let got = median(values);
        assert!(
            got == expected || (got.is_nan() && expected.is_nan()),
            "median({values:?}) = {got}, expected {expected}"
        );
    }

    #[test]
    fn medians() {
        check(&[], f64::NAN);
        check(&[3.0], 3.0);
        check(&[3.0, 1.0, 2.0], 2.0);
        check(&[4.0, 1.0, 3.0, 2.0], 2.5);
        check(&[1.0, 1.0, 5.0, 9.0], 3.0);
        check(&[-1.0, 10.0], 4.5);
    }

    #[test]
    fn least_values() {
        assert!(least(&[]).is_nan());
        assert!(least(&[1.0, f64::NAN]).is_nan());
        assert_eq!(least(&[3.0, 1.5, 2.0]), 1.5);
        assert_eq!(least(&[-1.0, 10.0]), -1.0);
    }
}

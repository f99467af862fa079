//! The one HPA rule the engine must respect when it picks a step: the HPA
//! ignores a desired count within its tolerance of the current one.
//!
//! rtc reports desired replicas `N` as an `AverageValue` external metric with
//! target 1, so the HPA's usage ratio is `N / current` and it acts only when
//! the ratio is outside `[1 - tolerance, 1 + tolerance]`, bounds included
//! (Kubernetes' `Tolerances::isWithin`). The ratio is computed as Kubernetes
//! does (milli-units, `f64`) so borderline cases round the same way.

/// Whether the HPA would move from `current` replicas to `desired`.
pub fn honours(current: u32, desired: u32, tolerance: f64) -> bool {
    if current == 0 {
        return desired != 0;
    }
    let ratio = (u64::from(desired) * 1000) as f64 / (1000.0 * f64::from(current));
    let within = 1.0 - tolerance <= ratio && ratio <= 1.0 + tolerance;
    !within
}

/// The smallest count above `current` the HPA acts on.
pub fn smallest_honoured_above(current: u32, tolerance: f64) -> u32 {
    (current + 1..).find(|d| honours(current, *d, tolerance)).expect("a tolerance under 1 is exceeded eventually")
}

/// The largest count below `current` the HPA acts on (`None` if even zero
/// is within tolerance, which a tolerance under 1 never allows).
pub fn largest_honoured_below(current: u32, tolerance: f64) -> Option<u32> {
    (0..current).rev().find(|d| honours(current, *d, tolerance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_table() {
        // (current, desired, honoured at the default 0.1)
        for (current, desired, expected) in [
            (2, 3, true),
            (9, 10, true),   // +11 %
            (10, 11, false), // exactly 10 %: ignored
            (20, 21, false),
            (20, 22, false), // exactly 10 %: the bound is inside
            (20, 23, true),
            (10, 9, false),
            (9, 8, true),
            (0, 2, true),
            (5, 5, false),
        ] {
            assert_eq!(honours(current, desired, 0.1), expected, "{current} -> {desired}");
        }
        assert_eq!(smallest_honoured_above(10, 0.1), 12);
        assert_eq!(smallest_honoured_above(3, 0.1), 4);
        assert_eq!(largest_honoured_below(10, 0.1), Some(8));
        assert_eq!(largest_honoured_below(9, 0.1), Some(8));
        assert_eq!(largest_honoured_below(30, 0.0), Some(29));
    }
}

//! Summary statistics of benchmark figures.

/// The median of `xs` (sorted here); 0 for none.
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => 0.0,
        _ if n.is_multiple_of(2) => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
        _ => xs[n / 2],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians() {
        assert_eq!(super::median(&mut []), 0.0);
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}

//! Ranks and the correlation of ranks, shared by the analyzer (Spearman's
//! rho between series) and the summarizer (the rank similarity of two
//! maps of one image).

/// Ranks 1..n, ties given the mean of the ranks they span. NaNs must have
/// been removed by the caller.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // positions start..end (0-based) hold ranks start+1..=end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Pearson's correlation; None when a side has no variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if !(sxx > 0.0 && syy > 0.0) {
        return None;
    }
    Some((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_ranks_share_ties() {
        assert_eq!(average_ranks(&[10.0, 20.0, 20.0, 5.0, 20.0]), [2.0, 4.0, 4.0, 1.0, 4.0]);
        assert_eq!(average_ranks(&[1.0, 1.0]), [1.5, 1.5]);
    }

    #[test]
    fn pearson_by_hand_and_undefined_without_variance() {
        // x = [1, 2, 3], y = [1, 3, 2]: means 2, 2; sxy = 1, sxx = syy = 2.
        assert_eq!(pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]), Some(0.5));
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 3.0, 2.0]), None);
        assert_eq!(pearson(&[1.0], &[1.0]), None);
    }
}

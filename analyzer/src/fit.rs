//! Fit diagnosis of a run from its metrics.
//!
//! **Rule.** From the checkpoints of `metrics.parquet` that have a test
//! loss, in step order:
//!
//! - `L_final` = the test loss at the last such checkpoint,
//! - `L_min` = the smallest test loss at any checkpoint (and its step),
//! - `T_final` = the mean of the per-batch train loss (`train_loss`) over
//!   the last 5 checkpoints (all of them if there are fewer),
//! - `rise = L_final / L_min - 1`: how far the test loss has climbed back
//!   from its best value,
//! - `gap = L_final - T_final`: the train/test gap at the end,
//! - `fall = L_fifth / L_final - 1`, where `L_fifth` is the test loss at
//!   the first checkpoint of the last fifth of training (step >= 0.8 of
//!   the final step): how much the test loss still fell at the end,
//! - `acc_gap` = `train_eval_acc - test_acc` at the last checkpoint (shown,
//!   not used by the rule).
//!
//! Then:
//!
//! | condition | diagnosis |
//! |---|---|
//! | `rise < 0.10` and `fall > 0.05` | underfit (still improving when training stopped) |
//! | `rise < 0.10` and `gap < 0.5 * L_final` | good fit |
//! | `rise < 0.10` and `gap >= 0.5 * L_final`, or `0.10 <= rise < 0.50` | slight overfit |
//! | `0.50 <= rise < 1.50` | overfit |
//! | `rise >= 1.50` | strong overfit |
//! | fewer than 2 checkpoints with a test loss, or `L_min <= 0` | unknown |
//!
//! A test loss that ends within 10% of its minimum is not (yet) rising;
//! the gap condition catches a run that fits its training data far better
//! than the test data without the test loss having turned. The thresholds
//! are relative, so they carry over between data sets whose losses differ
//! in scale (Fashion-MNIST vs CIFAR-10).

use common::artifacts::tables::metrics::Metric;

use crate::inputs::Metrics;

/// How many of the last checkpoints' batch losses make `T_final`.
pub const TRAIN_LOSS_WINDOW: usize = 5;

/// The diagnosed fit regime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    Underfit,
    GoodFit,
    SlightOverfit,
    Overfit,
    StrongOverfit,
    Unknown,
}

impl Fit {
    pub fn label(&self) -> &'static str {
        match self {
            Fit::Underfit => "underfit",
            Fit::GoodFit => "good fit",
            Fit::SlightOverfit => "slight overfit",
            Fit::Overfit => "overfit",
            Fit::StrongOverfit => "strong overfit",
            Fit::Unknown => "unknown",
        }
    }
}

/// A diagnosis with the numbers it used.
#[derive(Clone, Debug, PartialEq)]
pub struct FitDiagnosis {
    pub fit: Fit,
    pub final_step: Option<i64>,
    pub final_test_loss: Option<f64>,
    pub min_test_loss: Option<f64>,
    pub min_test_loss_step: Option<i64>,
    pub final_train_loss: Option<f64>,
    pub final_test_acc: Option<f64>,
    pub rise: Option<f64>,
    pub gap: Option<f64>,
    /// How much the test loss fell over the last fifth of training.
    pub fall: Option<f64>,
    /// `train_eval_acc - test_acc` at the last checkpoint.
    pub acc_gap: Option<f64>,
    /// Why the diagnosis is `Unknown`, if it is.
    pub note: Option<String>,
}

impl FitDiagnosis {
    fn unknown(note: &str) -> Self {
        FitDiagnosis {
            fit: Fit::Unknown,
            final_step: None,
            final_test_loss: None,
            min_test_loss: None,
            min_test_loss_step: None,
            final_train_loss: None,
            final_test_acc: None,
            rise: None,
            gap: None,
            fall: None,
            acc_gap: None,
            note: Some(note.to_string()),
        }
    }
}

/// Classifies `rise`, `fall` and `gap` (relative to `final_test_loss`)
/// by the rule in the module docs.
pub fn classify(rise: f64, fall: Option<f64>, gap: Option<f64>, final_test_loss: f64) -> Fit {
    if rise < 0.10 {
        match (fall, gap) {
            (Some(f), _) if f > 0.05 => Fit::Underfit,
            (_, Some(g)) if g >= 0.5 * final_test_loss => Fit::SlightOverfit,
            _ => Fit::GoodFit,
        }
    } else if rise < 0.50 {
        Fit::SlightOverfit
    } else if rise < 1.50 {
        Fit::Overfit
    } else {
        Fit::StrongOverfit
    }
}

/// Diagnoses a run from its metrics by the rule in the module docs.
pub fn diagnose(metrics: &Metrics) -> FitDiagnosis {
    let test_loss = metrics.column(Metric::TestLoss);
    let train_loss = metrics.column(Metric::TrainLoss);
    let test_acc = metrics.column(Metric::TestAcc);
    let rows: Vec<usize> = (0..metrics.step.len()).filter(|&i| test_loss[i].is_some()).collect();
    if rows.len() < 2 {
        return FitDiagnosis::unknown("fewer than 2 checkpoints with a test loss");
    }
    let last = *rows.last().unwrap();
    let final_test = test_loss[last].unwrap();
    let (min_row, min_test) =
        rows.iter().map(|&i| (i, test_loss[i].unwrap())).min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0))).unwrap();
    let recent: Vec<f64> = train_loss.iter().rev().flatten().take(TRAIN_LOSS_WINDOW).copied().collect();
    let final_train = (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64);
    let gap = final_train.map(|t| final_test - t);
    let final_step = metrics.step[last];
    let fifth = rows.iter().copied().find(|&i| metrics.step[i] as f64 >= 0.8 * final_step as f64);
    let fall = fifth.filter(|&i| i != last && final_test > 0.0).map(|i| test_loss[i].unwrap() / final_test - 1.0);
    let acc_gap = match (metrics.column(Metric::TrainEvalAcc)[last], test_acc[last]) {
        (Some(train), Some(test)) => Some(train - test),
        _ => None,
    };
    let mut d = FitDiagnosis {
        fit: Fit::Unknown,
        final_step: Some(metrics.step[last]),
        final_test_loss: Some(final_test),
        min_test_loss: Some(min_test),
        min_test_loss_step: Some(metrics.step[min_row]),
        final_train_loss: final_train,
        final_test_acc: test_acc[last],
        rise: None,
        gap,
        fall,
        acc_gap,
        note: None,
    };
    if !(min_test > 0.0) {
        d.note = Some("the minimum test loss is not positive".into());
        return d;
    }
    let rise = final_test / min_test - 1.0;
    d.rise = Some(rise);
    d.fit = classify(rise, fall, gap, final_test);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::by_step::tests::metrics_row;

    fn metrics(test: &[f64], train: &[f64]) -> Metrics {
        let rows = test.iter().zip(train).enumerate().map(|(i, (&test, &train))| {
            metrics_row(
                i as u64 * 100,
                &[(Metric::TestLoss, test), (Metric::TrainLoss, train), (Metric::TestAcc, 0.8), (Metric::TrainEvalAcc, 0.9)],
            )
        });
        Metrics::new(rows.collect()).unwrap()
    }

    #[test]
    fn good_fit_keeps_falling() {
        // test loss falls to its minimum at the end: rise = 0;
        // T_final = mean(0.6, 0.5, 0.45, 0.4, 0.35) = 0.46, gap = 0.38 - 0.46 < 0.5 * 0.38;
        // the last fifth starts at step 500 (>= 480): fall = 0.39 / 0.38 - 1 < 0.05
        let d = diagnose(&metrics(&[2.3, 1.0, 0.6, 0.5, 0.45, 0.39, 0.38], &[2.3, 1.1, 0.6, 0.5, 0.45, 0.4, 0.35]));
        assert_eq!(d.fit, Fit::GoodFit);
        assert_eq!(d.rise, Some(0.0));
        assert_eq!(d.min_test_loss_step, Some(600));
        assert!((d.final_train_loss.unwrap() - 0.46).abs() < 1e-12);
        assert!((d.fall.unwrap() - (0.39 / 0.38 - 1.0)).abs() < 1e-12);
        // train_eval_acc 0.9 (the helper's) - test_acc 0.8
        assert!((d.acc_gap.unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn still_falling_at_the_end_is_underfit() {
        // fall = 1.2 / 1.0 - 1 = 0.2 over the last fifth
        let d = diagnose(&metrics(&[2.3, 2.0, 1.8, 1.6, 1.4, 1.2, 1.0], &[2.3, 2.0, 1.8, 1.6, 1.4, 1.2, 1.0]));
        assert_eq!(d.fit, Fit::Underfit);
        assert!((d.fall.unwrap() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn rises_map_to_overfit_levels() {
        let train = [2.3, 1.0, 0.5, 0.2, 0.1, 0.05, 0.01];
        // min 1.0; final 1.2 -> rise 0.2: slight overfit
        let d = diagnose(&metrics(&[2.3, 1.2, 1.0, 1.05, 1.1, 1.15, 1.2], &train));
        assert_eq!(d.fit, Fit::SlightOverfit);
        assert!((d.rise.unwrap() - 0.2).abs() < 1e-12);
        // final 2.0 -> rise 1.0: overfit
        assert_eq!(diagnose(&metrics(&[2.3, 1.2, 1.0, 1.3, 1.6, 1.8, 2.0], &train)).fit, Fit::Overfit);
        // final 3.0 -> rise 2.0: strong overfit
        assert_eq!(diagnose(&metrics(&[2.3, 1.2, 1.0, 1.5, 2.0, 2.5, 3.0], &train)).fit, Fit::StrongOverfit);
        // boundaries: rise exactly 0.5 is overfit, exactly 1.5 strong overfit
        assert_eq!(classify(0.5, None, None, 1.0), Fit::Overfit);
        assert_eq!(classify(1.5, None, None, 1.0), Fit::StrongOverfit);
        assert_eq!(classify(0.0999, None, None, 1.0), Fit::GoodFit);
        // still falling at the end outranks a gap, not a rise
        assert_eq!(classify(0.0, Some(0.06), Some(10.0), 1.0), Fit::Underfit);
        assert_eq!(classify(0.2, Some(0.06), None, 1.0), Fit::SlightOverfit);
    }

    #[test]
    fn large_gap_without_rise_is_slight_overfit() {
        // test loss flat at its minimum (rise 0.02) but train loss 0.1 over
        // the last 5 checkpoints: gap = 1.02 - 0.1 = 0.92 >= 0.5 * 1.02
        let d = diagnose(&metrics(&[2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.02], &[2.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]));
        assert_eq!(d.fit, Fit::SlightOverfit);
        assert!((d.gap.unwrap() - 0.92).abs() < 1e-12);
        // with only 3 checkpoints T_final averages all three: (2.0 + 0.1 + 0.1) / 3,
        // gap = 1.02 - 0.7333 = 0.2867 < 0.51: good fit
        assert_eq!(diagnose(&metrics(&[2.0, 1.0, 1.02], &[2.0, 0.1, 0.1])).fit, Fit::GoodFit);
    }

    #[test]
    fn too_little_data_is_unknown() {
        assert_eq!(diagnose(&metrics(&[1.0], &[1.0])).fit, Fit::Unknown);
        let m = metrics(&[f64::NAN, 0.5, f64::NAN], &[1.0, 0.5, 0.4]);
        assert_eq!(diagnose(&m).fit, Fit::Unknown);
        assert_eq!(diagnose(&metrics(&[1.0, 0.0], &[1.0, 0.5])).fit, Fit::Unknown);
    }
}

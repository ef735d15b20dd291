//! Choosing the probe set: per class, images from the run's own training
//! data ("seen") and from the test set ("unseen").

use common::artifacts::{Probe, ProbeEntry, Split};
use common::config::ProbeConfig;
use common::data::ImageSet;
use common::rng::Rng;

/// The probe for a run that trains on `train_indices` of `train`. Per
/// class, the first images of a seeded shuffle; seen images first, classes
/// ascending. An error says which class has too few images.
pub fn select_probe(
    config: &ProbeConfig,
    train: &ImageSet,
    train_indices: &[usize],
    test: &ImageSet,
    classes: usize,
) -> Result<Probe, String> {
    let all_test: Vec<usize> = (0..test.len()).collect();
    let mut entries = Vec::new();
    for (split, set, pool, per_class) in [
        (Split::Seen, train, train_indices, config.seen_per_class),
        (Split::Unseen, test, &all_test[..], config.unseen_per_class),
    ] {
        let mut shuffled = pool.to_vec();
        Rng::for_purpose(config.seed, &format!("probe-{}", split.name())).shuffle(&mut shuffled);
        for class in 0..classes {
            let chosen: Vec<usize> =
                shuffled.iter().copied().filter(|&i| set.labels[i] as usize == class).take(per_class).collect();
            if chosen.len() < per_class {
                return Err(format!(
                    "the probe asks for {per_class} {} images of class {class}, but only {} are available",
                    split.name(),
                    chosen.len()
                ));
            }
            for source_index in chosen {
                entries.push(ProbeEntry { probe_id: entries.len() as i64, split, source_index, label: class as u8 });
            }
        }
    }
    Ok(Probe { entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::data::{synthetic, ImageShape};

    #[test]
    fn probe_is_balanced_seen_from_the_subset_and_deterministic() {
        let train = synthetic(ImageShape::GRAY_28, 200, 1);
        let test = synthetic(ImageShape::GRAY_28, 100, 2);
        let subset: Vec<usize> = (0..200).filter(|i| i % 3 != 0).collect();
        let config = ProbeConfig { seen_per_class: 2, unseen_per_class: 3, seed: 5 };
        let probe = select_probe(&config, &train, &subset, &test, 10).unwrap();
        assert_eq!(probe.len(), 50);
        assert_eq!(probe, select_probe(&config, &train, &subset, &test, 10).unwrap());
        for (i, e) in probe.entries.iter().enumerate() {
            assert_eq!(e.probe_id, i as i64);
            let set = if e.split == Split::Seen { &train } else { &test };
            assert_eq!(set.labels[e.source_index], e.label);
            if e.split == Split::Seen {
                assert!(subset.contains(&e.source_index));
            }
        }
        assert_eq!(probe.entries.iter().filter(|e| e.split == Split::Seen && e.label == 7).count(), 2);
        let greedy = ProbeConfig { seen_per_class: 14, unseen_per_class: 0, seed: 5 };
        let err = select_probe(&greedy, &train, &subset, &test, 10).unwrap_err();
        // Class 0 of the subset: multiples of 10 below 200 that are not multiples of 3.
        assert!(err.contains("14 seen images of class 0") && err.contains("only 13"), "{err}");
    }
}

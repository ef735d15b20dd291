//! Training one run: data order, checkpoints on the schedule, evaluation at
//! every checkpoint, and exact resumption after a kill.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use common::artifacts::tables::metrics::{metrics_frame, read_metrics, MetricsRow};
use common::artifacts::{
    read_checkpoint_header, read_verified_metadata, remove_if_present, remove_stale_temporaries, verify_stamp,
    write_parquet_stamped, CheckpointInfo, Divergence, ExpectedCheckpoint, RunLayout, Stamp,
};
use common::artifacts::{read_tensors, TensorData};
use common::config::{ExternalRun, Pipeline, RunConfig, RunInstance};
use common::data::{load_dataset, Dataset, ImageSet, Normalization};
use common::external::{external_checkpoints, read_external_metrics};
use common::provenance::{checkpoint_fingerprint, checkpoint_model, run_fingerprint};
use common::rng::Rng;
use common::stage::Status;
use engine::training::{loss_and_gradients, Device};
use engine::{cross_entropy_and_correct, Model};
use engine::{read_checkpoint, write_checkpoint};

use crate::adam::Adam;
use crate::metrics::RunningMean;
use crate::probe_selection::select_probe;
use crate::resume::{read_resume_state, write_resume_state, ResumeState};

/// Training images evaluated on fixed weights at every checkpoint, unless
/// the run says otherwise (`train_eval_size`).
pub const DEFAULT_TRAIN_EVAL_SIZE: usize = 2000;

/// Images per forward pass when evaluating: bounds the activations held at
/// once (the complex model's first layers are 128 KiB per image).
const EVAL_CHUNK: usize = 250;

/// The step arithmetic of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub train_len: usize,
    pub steps_per_epoch: u64,
    pub last_step: u64,
    pub checkpoint_steps: Vec<u64>,
}

impl Plan {
    pub fn new(run: &RunConfig, train_len: usize) -> Self {
        let steps_per_epoch = train_len.div_ceil(run.batch_size) as u64;
        let last_step = steps_per_epoch * u64::from(run.epoch_count());
        Self { train_len, steps_per_epoch, last_step, checkpoint_steps: run.schedule().steps(last_step) }
    }

    pub fn epoch_of(&self, step: u64) -> f64 {
        step as f64 / self.steps_per_epoch as f64
    }
}

/// A run whose batch loss exceeds this (in nats; chance level is
/// ln(classes), 2.3 for ten classes) is taken to have diverged, as is one
/// whose loss, weights or evaluation losses are not finite.
pub const DIVERGED_LOSS: f64 = 1e3;

/// What the trainer will do with a run that is not up to date, and why.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainPlan {
    /// Nothing usable on disk.
    Fresh,
    /// What is on disk is not this configuration's (or is damaged) and
    /// will be removed: the file and why.
    Stale(String),
    /// `--force`: whatever is on disk is removed.
    Forced,
    /// Resumable from this step.
    Resume(u64),
}

impl std::fmt::Display for TrainPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainPlan::Fresh => write!(f, "from the start"),
            TrainPlan::Stale(why) => write!(f, "again: {why}"),
            TrainPlan::Forced => write!(f, "again: --force"),
            TrainPlan::Resume(step) => write!(f, "on from step {step}"),
        }
    }
}

/// The training images a run uses: all, or the first `train_subset` of a
/// shuffle seeded by `subset_seed` (the run's first seed: every replicate
/// of a run trains on the same images).
pub fn training_indices(run: &RunConfig, subset_seed: u64, train_len: usize) -> anyhow::Result<Vec<usize>> {
    let mut indices: Vec<usize> = (0..train_len).collect();
    if let Some(n) = run.train_subset {
        if n > train_len {
            bail!("train_subset = {n} but the training set has only {train_len} images");
        }
        Rng::for_purpose(subset_seed, "train-subset").shuffle(&mut indices);
        indices.truncate(n);
    }
    Ok(indices)
}

/// Decides, from the files alone, whether a run is done, resumable or
/// stale. Done means: the metrics table (written last) and the probe carry
/// stamps of the run's current fingerprint, their bytes are those they were
/// stamped with, and every checkpoint the table lists is there, is the
/// checkpoint of that run and step under this configuration, and its data
/// matches its content hash. A run that diverged is an error (training it
/// again would diverge again).
pub fn run_status(pipeline: &Pipeline, instance: &RunInstance, layout: &RunLayout) -> anyhow::Result<Status<TrainPlan>> {
    let (run, name) = (&instance.config, instance.path.as_str());
    let fingerprint = run_fingerprint(&pipeline.config, instance);
    let expected = |step: u64| checkpoint_fingerprint(&fingerprint, step);
    let model = checkpoint_model(pipeline, run);
    let check_checkpoint = |step: u64| -> Result<(), String> {
        let path = layout.checkpoint(step);
        let header = read_checkpoint_header(&path).map_err(|e| e.to_string())?;
        let fingerprint = expected(step);
        header
            .check(&ExpectedCheckpoint { run: name, step, fingerprint: &fingerprint, model: &model })
            .map_err(|e| format!("{}: {e}", path.display()))?;
        read_verified_metadata(&path).map(|_| ()).map_err(|e| e.to_string())
    };
    let done = (|| -> Result<Option<Divergence>, String> {
        let current = |path: &Path| -> Result<Stamp, String> {
            let stamp = verify_stamp(path)?;
            if stamp.fingerprint != fingerprint {
                return Err(format!("{}: written for another configuration of the run", path.display()));
            }
            Ok(stamp)
        };
        current(&layout.probe())?;
        let stamp = current(&layout.metrics())?;
        let rows = read_metrics(&layout.metrics()).map_err(|e| e.to_string())?;
        for row in &rows {
            check_checkpoint(row.step)?;
        }
        Ok(stamp.diverged)
    })();
    let why = match done {
        Ok(None) => return Ok(Status::UpToDate),
        Ok(Some(d)) => bail!(
            "diverged at step {} ({}); its checkpoints before that step are kept and analysed. Lower the learning \
             rate, or --force to train it again",
            d.step,
            d.why
        ),
        Err(why) => why,
    };
    let steps = layout.checkpoint_steps().unwrap_or_default();
    if let Some(&s) = steps.iter().rev().find(|&&s| layout.resume_state(s).is_file() && check_checkpoint(s).is_ok()) {
        return Ok(Status::ToDo(TrainPlan::Resume(s)));
    }
    match steps.iter().find_map(|&s| check_checkpoint(s).err()) {
        Some(stale) => Ok(Status::ToDo(TrainPlan::Stale(stale))),
        None if steps.is_empty() => Ok(Status::ToDo(TrainPlan::Fresh)),
        // Checkpoints of this configuration without their table: the run
        // stopped after them and cannot resume.
        None => Ok(Status::ToDo(TrainPlan::Stale(why))),
    }
}

/// Everything fixed for the duration of one run.
struct Setup<'a> {
    name: &'a str,
    run: &'a RunConfig,
    layout: &'a RunLayout,
    fingerprint: String,
    /// The architecture every checkpoint of the run has.
    model: common::artifacts::CheckpointModel,
    plan: Plan,
    dataset: Dataset,
    train_indices: Vec<usize>,
    evaluation: Evaluation,
}

/// How training a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainOutcome {
    /// Trained to this step.
    Finished(u64),
    /// Stopped at a divergence; the checkpoints before it are kept.
    Diverged(Divergence),
}

/// Trains one run, or finishes it from where `plan` says it stopped.
pub fn train_run(pipeline: &Pipeline, instance: &RunInstance, status: TrainPlan) -> anyhow::Result<TrainOutcome> {
    let (name, run) = (instance.path.as_str(), &instance.config);
    let layout = RunLayout::new(pipeline.output_dir(), name);
    let dataset_spec = pipeline.dataset_of(run);
    let dataset = load_dataset(&dataset_spec.config).with_context(|| format!("data set `{}`", run.dataset))?;
    for (split, set) in [("training", &dataset.train), ("test", &dataset.test)] {
        if set.is_empty() {
            bail!(
                "data set `{}`: its {split} set has no images (training, the test metrics and the probe set need both)",
                run.dataset
            );
        }
    }
    let normalization = dataset_spec.normalization.clone();
    let train_indices = training_indices(run, instance.subset_seed, dataset.train.len())?;
    let fingerprint = run_fingerprint(&pipeline.config, instance);
    let probe = select_probe(&pipeline.config.probe, &dataset.train, &train_indices, &dataset.test, dataset.classes)
        .map_err(|e| anyhow::anyhow!("data set `{}`: {e}", run.dataset))?;
    for dir in [layout.dir.clone(), layout.checkpoints_dir()] {
        remove_stale_temporaries(&dir).with_context(|| format!("cleaning {}", dir.display()))?;
    }
    write_parquet_stamped(&layout.probe(), &mut probe.to_frame(), Stamp::new(&fingerprint))?;
    let eval_len = run.eval_size.unwrap_or(dataset.test.len()).min(dataset.test.len());
    let train_eval_len = run.train_eval_size.unwrap_or(DEFAULT_TRAIN_EVAL_SIZE).min(train_indices.len());
    let evaluation = Evaluation {
        probe: probe.images(&dataset).map_err(|e| anyhow::anyhow!(e))?,
        normalization,
        eval_indices: (0..eval_len).collect(),
        train_eval_indices: train_indices[..train_eval_len].to_vec(),
    };
    if let Some(external) = &run.external {
        let model = checkpoint_model(pipeline, run);
        return import_run(ImportSetup { name, run, external, layout: &layout, fingerprint, model, dataset, evaluation });
    }
    let setup = Setup {
        name,
        run,
        layout: &layout,
        fingerprint,
        model: checkpoint_model(pipeline, run),
        plan: Plan::new(run, train_indices.len()),
        train_indices,
        evaluation,
        dataset,
    };

    let (model, state) = match status {
        TrainPlan::Resume(step) => match resume(&setup, step) {
            Ok(resumed) => resumed,
            // Another trainer on the same run may have moved past this
            // state and removed it; starting over gives the same bytes.
            Err(e) => {
                tracing::warn!("run `{name}`: cannot resume from step {step} ({e:#}); starting over");
                start(&setup)?
            }
        },
        TrainPlan::Fresh => start(&setup)?,
        TrainPlan::Stale(_) | TrainPlan::Forced => {
            tracing::info!("run `{name}`: removing earlier checkpoints");
            remove_checkpoints(&layout)?;
            start(&setup)?
        }
    };
    let (rows, diverged) = match train_from(&setup, model, state)? {
        Trained::Finished(rows) => (rows, None),
        Trained::Diverged(rows, divergence) => (rows, Some(divergence)),
    };
    let stamp = Stamp { diverged: diverged.clone(), ..Stamp::new(&setup.fingerprint) };
    write_parquet_stamped(&layout.metrics(), &mut metrics_frame(&rows), stamp)?;
    for step in layout.checkpoint_steps()? {
        remove_if_present(&layout.resume_state(step))?;
    }
    Ok(match diverged {
        Some(d) => TrainOutcome::Diverged(d),
        None => TrainOutcome::Finished(setup.plan.last_step),
    })
}

/// What a checkpoint's weights are evaluated on: the first test images,
/// the probe images and fixed training images.
struct Evaluation {
    probe: ImageSet,
    normalization: Normalization,
    eval_indices: Vec<usize>,
    /// The fixed training images the checkpoint's weights are evaluated on.
    train_eval_indices: Vec<usize>,
}

/// A checkpoint's losses and accuracies on the sets of an [`Evaluation`].
struct Evaluated {
    test_loss: f64,
    test_acc: f64,
    probe_loss: f64,
    probe_acc: f64,
    train_eval_loss: f64,
    train_eval_acc: f64,
}

/// What training itself recorded at a checkpoint's step: the loss the
/// checkpoint is said to have, and the running means since the last one.
struct TrainingLosses {
    train_loss: f64,
    train_loss_running: f64,
    train_acc_running: f64,
}

impl Evaluated {
    /// The metrics row of the checkpoint at `step`.
    fn row(&self, step: u64, epoch: f64, training: TrainingLosses) -> MetricsRow {
        let TrainingLosses { train_loss, train_loss_running, train_acc_running } = training;
        MetricsRow {
            step,
            epoch,
            train_loss,
            train_loss_running,
            train_acc_running,
            test_loss: self.test_loss,
            test_acc: self.test_acc,
            probe_loss: self.probe_loss,
            probe_acc: self.probe_acc,
            train_eval_loss: self.train_eval_loss,
            train_eval_acc: self.train_eval_acc,
        }
    }
}

impl Evaluation {
    fn of(&self, model: &Model, dataset: &Dataset) -> anyhow::Result<Evaluated> {
        let classes = dataset.classes;
        let (test_loss, test_acc) = evaluate(model, &dataset.test, &self.eval_indices, &self.normalization, classes)?;
        let all_probe: Vec<usize> = (0..self.probe.len()).collect();
        let (probe_loss, probe_acc) = evaluate(model, &self.probe, &all_probe, &self.normalization, classes)?;
        let (train_eval_loss, train_eval_acc) =
            evaluate(model, &dataset.train, &self.train_eval_indices, &self.normalization, classes)?;
        Ok(Evaluated { test_loss, test_acc, probe_loss, probe_acc, train_eval_loss, train_eval_acc })
    }
}

/// Everything fixed while a run trained elsewhere is imported.
struct ImportSetup<'a> {
    name: &'a str,
    run: &'a RunConfig,
    external: &'a ExternalRun,
    layout: &'a RunLayout,
    fingerprint: String,
    model: common::artifacts::CheckpointModel,
    dataset: Dataset,
    evaluation: Evaluation,
}

/// Imports a run trained elsewhere: checks that its checkpoints and its
/// metrics file list the same steps, reads every checkpoint into the run's
/// model (a wrong tensor name or shape is an error naming the file and the
/// tensor), evaluates it as a trained run's checkpoints are evaluated, and
/// writes it as the run's checkpoint with this configuration's metadata,
/// then the metrics table. The file's `train_loss` and `train_acc` are the
/// training-loop records; where the file has none, the loss and accuracy
/// on the fixed training images stand in.
fn import_run(setup: ImportSetup) -> anyhow::Result<TrainOutcome> {
    let ImportSetup { name, run, external, layout, fingerprint, model, dataset, evaluation } = setup;
    let files = external_checkpoints(&external.checkpoints).map_err(anyhow::Error::msg)?;
    let metrics = read_external_metrics(&external.metrics).map_err(anyhow::Error::msg)?;
    for (step, path) in &files {
        if !metrics.iter().any(|m| m.step == *step) {
            bail!("{}: step {step} is missing from the metrics file {}", path.display(), external.metrics.display());
        }
    }
    if let Some(m) = metrics.iter().find(|m| !files.iter().any(|(step, _)| *step == m.step)) {
        bail!(
            "{}: step {} has no checkpoint step-{}.safetensors in {}",
            external.metrics.display(),
            m.step,
            m.step,
            external.checkpoints.display()
        );
    }
    remove_checkpoints(layout)?;
    let mut rows = Vec::with_capacity(files.len());
    for ((step, path), recorded) in files.iter().zip(&metrics) {
        let step = *step;
        let file = read_tensors(path)?;
        let mut tensors = BTreeMap::new();
        for (tensor, data) in file.tensors {
            match data {
                TensorData::F32 { shape, data } => {
                    tensors.insert(tensor, (shape, data));
                }
                TensorData::I64 { .. } => {
                    bail!("{}: tensor `{tensor}` is int64; a state_dict of float32 parameters is expected", path.display())
                }
            }
        }
        let mut network = Model::zeros(&model.architecture, model.input)?;
        network.load_parameters(&tensors).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(p) = network.parameters().iter().find(|p| p.data.iter().any(|v| !v.is_finite())) {
            bail!("{}: tensor `{}` holds NaN or infinite values", path.display(), p.name);
        }
        let evaluated = evaluation.of(&network, &dataset)?;
        let train_loss = recorded.train_loss.unwrap_or(evaluated.train_eval_loss);
        let epoch = recorded.epoch.unwrap_or(f64::NAN);
        let training = TrainingLosses {
            train_loss,
            train_loss_running: train_loss,
            train_acc_running: recorded.train_acc.unwrap_or(evaluated.train_eval_acc),
        };
        rows.push(evaluated.row(step, epoch, training));
        let info = CheckpointInfo {
            run: name.to_string(),
            step,
            epoch,
            dataset: run.dataset.clone(),
            fingerprint: checkpoint_fingerprint(&fingerprint, step),
        };
        write_checkpoint(&layout.checkpoint(step), &network, &info)?;
        tracing::info!("run `{name}`: imported step {step} from {}: test loss {:.4}", path.display(), evaluated.test_loss);
    }
    write_parquet_stamped(&layout.metrics(), &mut metrics_frame(&rows), Stamp::new(&fingerprint))?;
    Ok(TrainOutcome::Finished(rows.last().map_or(0, |r| r.step)))
}

/// The rows of the checkpoints written, and whether training stopped early.
enum Trained {
    Finished(Vec<MetricsRow>),
    Diverged(Vec<MetricsRow>, Divergence),
}

fn remove_checkpoints(layout: &RunLayout) -> anyhow::Result<()> {
    let dir = layout.checkpoints_dir();
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

fn start(setup: &Setup) -> anyhow::Result<(Model, ResumeState)> {
    let shape = setup.dataset.train.shape;
    let model = Model::initialized(&setup.model.architecture, shape, setup.run.seed)?;
    let lengths: Vec<usize> = model.parameters().iter().map(|p| p.data.len()).collect();
    let state = ResumeState {
        step: 0,
        fingerprint: setup.fingerprint.clone(),
        adam: Adam::new(setup.run.learning_rate, &lengths),
        rows: Vec::new(),
        running: RunningMean::default(),
    };
    // Step 0: the untrained model's loss on the first batch stands in for
    // the training loss.
    let mut state = state;
    let order = epoch_order(setup, 0);
    let chosen = batch_indices(setup, &order, 1);
    let x = setup.evaluation.normalization.batch(&setup.dataset.train, chosen);
    let labels: Vec<u8> = chosen.iter().map(|&i| setup.dataset.train.labels[i]).collect();
    let (loss, correct) = cross_entropy_and_correct(&model.forward(&x)?, &labels, setup.dataset.classes);
    state.running.add(loss, correct, labels.len());
    if let Some(d) = checkpoint(setup, &model, &mut state, loss)? {
        bail!("the untrained model already fails: {}", d.why);
    }
    Ok((model, state))
}

fn resume(setup: &Setup, step: u64) -> anyhow::Result<(Model, ResumeState)> {
    let fingerprint = checkpoint_fingerprint(&setup.fingerprint, step);
    let expected = ExpectedCheckpoint { run: setup.name, step, fingerprint: &fingerprint, model: &setup.model };
    let model = read_checkpoint(&setup.layout.checkpoint(step), &expected)?.model;
    let state = read_resume_state(&setup.layout.resume_state(step), &model)?;
    if state.fingerprint != setup.fingerprint || state.step != step {
        bail!("{}: written for another configuration or step", setup.layout.resume_state(step).display());
    }
    tracing::info!("run `{}`: resuming from step {step} of {}", setup.name, setup.plan.last_step);
    Ok((model, state))
}

/// The images of training step `step` (1-based) within its epoch's order.
fn batch_indices<'o>(setup: &Setup, order: &'o [usize], step: u64) -> &'o [usize] {
    let position = ((step - 1) % setup.plan.steps_per_epoch) as usize;
    let size = setup.run.batch_size;
    &order[position * size..((position + 1) * size).min(order.len())]
}

/// The run's training images in the order of epoch `epoch`.
fn epoch_order(setup: &Setup, epoch: u64) -> Vec<usize> {
    let mut order = setup.train_indices.clone();
    Rng::for_purpose(setup.run.seed, &format!("epoch-{epoch}")).shuffle(&mut order);
    order
}

fn train_from(setup: &Setup, mut model: Model, mut state: ResumeState) -> anyhow::Result<Trained> {
    let dev = Device::default();
    let plan = &setup.plan;
    let bar = common::cli::progress_bar(plan.last_step, format!("train {}", setup.name));
    bar.set_position(state.step);
    let mut order: Option<(u64, Vec<usize>)> = None;
    let mut x = Vec::new();
    for step in state.step + 1..=plan.last_step {
        let epoch = (step - 1) / plan.steps_per_epoch;
        if order.as_ref().map(|(e, _)| *e) != Some(epoch) {
            order = Some((epoch, epoch_order(setup, epoch)));
        }
        let chosen = batch_indices(setup, &order.as_ref().expect("set above").1, step);
        setup.evaluation.normalization.batch_into(&setup.dataset.train, chosen, &mut x);
        let labels: Vec<u8> = chosen.iter().map(|&i| setup.dataset.train.labels[i]).collect();
        // Dropout masks are drawn per step, so a resumed run draws the same.
        let dropout_seed = Rng::for_purpose(setup.run.seed, &format!("dropout-{step}")).next_u64();
        let result = loss_and_gradients(&dev, &model, std::mem::take(&mut x), &labels, dropout_seed)?;
        let loss = result.loss as f64;
        if !(loss.is_finite() && loss <= DIVERGED_LOSS) {
            bar.finish_and_clear();
            let why = format!("batch loss {loss:e} at step {step}");
            return Ok(Trained::Diverged(state.rows, Divergence { step, why }));
        }
        state.adam.step(model.parameters_mut(), &result.gradients);
        state.running.add(loss, result.correct, labels.len());
        state.step = step;
        if plan.checkpoint_steps.binary_search(&step).is_ok() {
            if let Some(divergence) = checkpoint(setup, &model, &mut state, loss)? {
                bar.finish_and_clear();
                return Ok(Trained::Diverged(state.rows, divergence));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Trained::Finished(state.rows))
}

/// Mean cross-entropy and accuracy of `model` on `indices` of `set`.
fn evaluate(
    model: &Model,
    set: &ImageSet,
    indices: &[usize],
    normalization: &Normalization,
    classes: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut loss_sum, mut correct) = (0.0, 0);
    let mut x = Vec::new();
    for chunk in indices.chunks(EVAL_CHUNK) {
        normalization.batch_into(set, chunk, &mut x);
        let labels: Vec<u8> = chunk.iter().map(|&i| set.labels[i]).collect();
        let (loss, c) = cross_entropy_and_correct(&model.forward(&x)?, &labels, classes);
        loss_sum += loss * chunk.len() as f64;
        correct += c;
    }
    let n = indices.len().max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// Evaluates, records the metrics row, and writes the checkpoint and the
/// state to resume from it (state first: a checkpoint without its state is
/// simply not resumable, never inconsistent). A model whose weights or
/// evaluation losses are not finite is not written: that is a divergence.
fn checkpoint(setup: &Setup, model: &Model, state: &mut ResumeState, train_loss: f64) -> anyhow::Result<Option<Divergence>> {
    let step = state.step;
    if let Some(p) = model.parameters().iter().find(|p| p.data.iter().any(|v| !v.is_finite())) {
        return Ok(Some(Divergence { step, why: format!("`{}` holds NaN or infinite weights at step {step}", p.name) }));
    }
    let evaluated = setup.evaluation.of(model, &setup.dataset)?;
    if let Some((what, loss)) =
        [("test", evaluated.test_loss), ("probe", evaluated.probe_loss), ("training-set", evaluated.train_eval_loss)]
            .into_iter()
            .find(|(_, l)| !(l.is_finite() && *l <= DIVERGED_LOSS))
    {
        return Ok(Some(Divergence { step, why: format!("{what} loss {loss:e} at step {step}") }));
    }
    let (train_loss_running, train_acc_running) = state.running.take();
    state.rows.push(evaluated.row(
        step,
        setup.plan.epoch_of(step),
        TrainingLosses { train_loss, train_loss_running, train_acc_running },
    ));
    tracing::info!(
        "run `{}` step {step}: train loss {train_loss_running:.4}, test loss {:.4}, test acc {:.2}%",
        setup.name,
        evaluated.test_loss,
        100.0 * evaluated.test_acc
    );
    let layout = setup.layout;
    write_resume_state(&layout.resume_state(step), model, state)?;
    let info = CheckpointInfo {
        run: setup.name.to_string(),
        step,
        epoch: setup.plan.epoch_of(step),
        dataset: setup.run.dataset.clone(),
        fingerprint: checkpoint_fingerprint(&setup.fingerprint, step),
    };
    write_checkpoint(&layout.checkpoint(step), model, &info)?;
    for older in layout.checkpoint_steps()?.into_iter().filter(|&s| s < step) {
        remove_if_present(&layout.resume_state(older))?;
    }
    Ok(None)
}

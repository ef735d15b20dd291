//! Models defined in the config (`configs/custom-model.toml`) through every
//! stage, and the PyTorch module the trainer prints for them.

use std::collections::BTreeMap;
use std::path::Path;

use common::artifacts::{read_attributions, read_tensors};
use pipeline_tests::{run_pipeline, snapshot, workspace_root, Scratch, STAGES};

/// `configs/custom-model.toml` on synthetic CIFAR-shaped data, trained for
/// a few steps.
fn custom_model_scratch(name: &str) -> Scratch {
    let text = std::fs::read_to_string(workspace_root().join("configs/custom-model.toml")).expect("configs/custom-model.toml");
    let replacements = [
        ("dir = \"runs/custom-model\"", "dir = \"@OUT@\""),
        (
            "kind = \"cifar10\"\npath = \"data/cifar-10-batches-bin\"",
            "kind = \"synthetic\"\nshape = \"3x32x32\"\ntrain_size = 200\ntest_size = 100\nseed = 3",
        ),
        ("seen_per_class = 5\nunseen_per_class = 5", "seen_per_class = 1\nunseen_per_class = 1"),
        ("epochs = 2\n", "epochs = 1\nbatch_size = 50\n"),
        ("train_subset = 5000\neval_size = 1000\ntrain_eval_size = 1000\n", ""),
        ("checkpoints = { every = 20 }", "checkpoints = { every = 2 }"),
    ];
    let mut config = text;
    for (from, to) in replacements {
        assert!(config.contains(from), "configs/custom-model.toml has no `{from}`");
        config = config.replacen(from, to, 1);
    }
    Scratch::with_config(name, &config)
}

#[test]
fn a_model_of_the_config_trains_and_is_explained_by_every_method() {
    let s = custom_model_scratch("custom-model");
    run_pipeline(&s);
    let run = s.out().join("small-vgg");
    // 200 images in batches of 50: steps 0, 2 and the last, 4.
    for method in ["lrp", "lrp-plus", "gradcam", "gradient"] {
        for step in [0, 2, 4] {
            let file = run.join(format!("attributions/{method}/step-{step:06}.safetensors"));
            let maps = read_attributions(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(maps.probe_id.len(), 20, "{method} at step {step}");
            assert_eq!((maps.height, maps.width), (32, 32), "{method}: input-sized maps (Grad-CAM upsampled)");
            assert!(maps.maps.iter().all(|v| v.is_finite()), "{method} at step {step}: finite");
            assert!(maps.maps.iter().any(|&v| v != 0.0), "{method} at step {step}: not all zero");
        }
        assert!(run.join(format!("summaries/{method}.parquet")).is_file(), "{method}: summaries");
    }
    let report = std::fs::read_to_string(s.out().join("analysis/report.md")).unwrap();
    assert!(report.contains("## Method `gradcam`"), "{report}");

    // Cached like any run; changing a layer retrains.
    let before = snapshot(&s.out());
    for stage in STAGES {
        let log = s.ok(stage, &[]);
        assert!(log.contains("nothing to do") || log.contains("up to date"), "{stage} did work on a rerun:\n{log}");
    }
    assert_eq!(before.len(), snapshot(&s.out()).len());
    s.edit_config("{ dense = 128 }", "{ dense = 64 }");
    let log = s.ok("trainer", &["--dry-run"]);
    assert!(log.contains("1 unit(s) to do"), "a changed layer retrains:\n{log}");
}

#[test]
fn a_model_that_does_not_fit_its_images_is_refused_naming_the_layer_and_shapes() {
    let s = custom_model_scratch("custom-model-bad");
    s.edit_config(
        "{ conv = 64, kernel = 3, padding = 1 }, \"relu\", \"avg_pool\",",
        "\"max_pool\", \"max_pool\", \"max_pool\", \"max_pool\",",
    );
    let err = s.fails("trainer", &[]);
    assert!(
        err.contains("`models.small-vgg.layers`: model `small-vgg`, layer 10 (`max_pool`): gets 64x1x1: a 2x2 pool needs planes of at least 2x2 (on the 3x32x32 images of run `small-vgg`)"),
        "{err}"
    );
}

/// One parameter module of the printed code: its name and the shapes of
/// its weight and bias.
fn modules_of(code: &str) -> BTreeMap<String, (Vec<usize>, Vec<usize>)> {
    let numbers = |args: &str| -> Vec<usize> {
        args.split(|c: char| !c.is_ascii_digit() && c != '=')
            .filter(|t| !t.is_empty() && !t.contains('='))
            .map(|t| t.parse().unwrap())
            .collect()
    };
    let mut modules = BTreeMap::new();
    let mut sequential: Option<usize> = None;
    for line in code.lines().map(str::trim) {
        if line.starts_with("self.features_conv = nn.Sequential(") {
            sequential = Some(0);
            continue;
        }
        if let Some(index) = sequential {
            if line == ")" {
                sequential = None;
                continue;
            }
            if let Some(args) = line.strip_prefix("nn.Conv2d(") {
                let kernel: usize = args.split("kernel_size=").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
                let n = numbers(args.split("kernel_size").next().unwrap());
                modules.insert(format!("features_conv.{index}"), (vec![n[1], n[0], kernel, kernel], vec![n[1]]));
            }
            sequential = Some(index + 1);
        } else if let Some((name, args)) = line.strip_prefix("self.").and_then(|l| l.split_once(" = nn.Linear(")) {
            let n = numbers(args);
            modules.insert(name.to_string(), (vec![n[1], n[0]], vec![n[1]]));
        }
    }
    modules
}

/// The code `--torch-module` prints declares exactly the checkpoint's
/// tensors, under their names and with their shapes (checked here without
/// PyTorch; `torch_module_gives_our_logits` runs it in PyTorch).
#[test]
fn the_torch_module_declares_every_checkpoint_tensor_by_name_and_shape() {
    let s = custom_model_scratch("torch-module");
    s.ok("trainer", &[]);
    let code = String::from_utf8(s.stage("trainer", &["--torch-module", "small-vgg"]).stdout).unwrap();
    assert!(code.contains("class SmallVgg(nn.Module):"), "{code}");
    let modules = modules_of(&code);
    let checkpoint = read_tensors(&s.out().join("small-vgg/checkpoints/step-000004.safetensors")).unwrap();
    let mut declared = BTreeMap::new();
    for (name, (weight, bias)) in &modules {
        declared.insert(format!("{name}.weight"), weight.clone());
        declared.insert(format!("{name}.bias"), bias.clone());
    }
    let stored: BTreeMap<String, Vec<usize>> =
        checkpoint.tensors.iter().map(|(name, tensor)| (name.clone(), tensor.shape().to_vec())).collect();
    assert_eq!(declared, stored, "{code}");
    assert!(stored.contains_key("features_conv.2.weight") && stored.contains_key("fc2.bias"));

    // The module's first dense layer depends on the images: a model no run
    // trains has none.
    let err = s.fails("trainer", &["--torch-module", "simple"]);
    assert!(err.contains("no selected run trains model `simple`"), "{err}");
}

/// Runs the printed module in PyTorch on a checkpoint and compares its
/// logits with ours. Needs a Python with torch: `TORCH_PYTHON=/path/to/python
/// cargo test -p pipeline-tests --test models -- --ignored`.
#[test]
#[ignore = "needs a Python with PyTorch in TORCH_PYTHON"]
fn torch_module_gives_our_logits() {
    let python = std::env::var("TORCH_PYTHON").expect("TORCH_PYTHON: a Python interpreter with torch");
    let s = custom_model_scratch("torch-logits");
    s.ok("trainer", &[]);
    let code = String::from_utf8(s.stage("trainer", &["--torch-module", "small-vgg"]).stdout).unwrap();
    let module = s.dir.join("module.py");
    std::fs::write(&module, &code).unwrap();
    let checkpoint = s.out().join("small-vgg/checkpoints/step-000004.safetensors");
    let logits = s.dir.join("ours.txt");
    let ours = logits_of_checkpoint(&s, &checkpoint);
    std::fs::write(&logits, ours.iter().map(|v| format!("{v:e}")).collect::<Vec<_>>().join("\n")).unwrap();
    let script = format!(
        r#"
import json, struct, sys, torch
sys.path.insert(0, {dir:?})
import module
raw = open({checkpoint:?}, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
state = {{}}
for name, entry in header.items():
    if name == "__metadata__":
        continue
    start, end = entry["data_offsets"]
    state[name] = torch.frombuffer(bytearray(raw[8 + n + start:8 + n + end]), dtype=torch.float32).reshape(entry["shape"])
net = module.SmallVgg()
net.load_state_dict(state, strict=True)
net.eval()
x = torch.tensor([((i * 37) % 101) / 50.0 - 1.0 for i in range(2 * 3 * 32 * 32)], dtype=torch.float32).reshape(2, 3, 32, 32)
ours = torch.tensor([float(v) for v in open({logits:?}).read().split()]).reshape(2, 10)
diff = (net(x).detach() - ours).abs().max().item()
print("max abs logit difference", diff)
assert diff < 1e-4, diff
"#,
        dir = s.dir.display().to_string(),
        checkpoint = checkpoint.display().to_string(),
        logits = logits.display().to_string(),
    );
    let out = std::process::Command::new(python).arg("-c").arg(script).output().expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    eprintln!("{text}");
}

/// Our logits of the checkpoint on the two images the script builds.
fn logits_of_checkpoint(s: &Scratch, checkpoint: &Path) -> Vec<f32> {
    let pipeline = common::config::Pipeline::load(&s.config).unwrap();
    let run = &pipeline.config.runs["small-vgg"];
    let model =
        common::artifacts::CheckpointModel { architecture: pipeline.architecture_of(run), input: pipeline.dataset_of(run).shape };
    let header = common::artifacts::read_checkpoint_header(checkpoint).unwrap();
    let expected =
        common::artifacts::ExpectedCheckpoint { run: "small-vgg", step: 4, fingerprint: &header.info.fingerprint, model: &model };
    let loaded = engine::read_checkpoint(checkpoint, &expected).unwrap();
    let x: Vec<f32> = (0..2 * 3 * 32 * 32).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
    loaded.model.forward(&x).unwrap()
}

/// `configs/image-folder.toml` on a folder written from the synthetic set
/// (as its example program writes it), trained briefly: every stage runs on
/// PNG files.
#[test]
fn an_image_folder_trains_and_is_explained() {
    let text = std::fs::read_to_string(workspace_root().join("configs/image-folder.toml")).expect("configs/image-folder.toml");
    let scratch_dir = common::scratch::ScratchDir::new("pipeline-e2e-image-folder-data");
    let shape = common::data::ImageShape::RGB_32;
    let dataset = common::data::Dataset {
        train: common::data::synthetic(shape, 200, 7),
        test: common::data::synthetic(shape, 60, 8),
        classes: 10,
    };
    common::data::write_image_folder(&scratch_dir, &dataset).unwrap();
    let mut config = text;
    for (from, to) in [
        ("dir = \"runs/image-folder\"", "dir = \"@OUT@\"".to_string()),
        ("path = \"data/synthetic-folder\"", format!("path = {:?}", scratch_dir.display().to_string())),
        ("epochs = 3", "epochs = 1".to_string()),
        ("checkpoints = { every = 10 }", "checkpoints = { every = 2 }".to_string()),
    ] {
        assert!(config.contains(from), "configs/image-folder.toml has no `{from}`");
        config = config.replacen(from, &to, 1);
    }
    let s = Scratch::with_config("image-folder", &config);
    run_pipeline(&s);
    for method in ["lrp", "gradcam"] {
        let file = s.out().join(format!("simple/attributions/{method}/step-000004.safetensors"));
        let maps = read_attributions(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(maps.probe_id.len(), 40, "{method}: two seen and two unseen images per class");
        assert!(maps.maps.iter().all(|v| v.is_finite()) && maps.maps.iter().any(|&v| v != 0.0), "{method}");
    }
    // The data enter by their content: moved elsewhere, nothing is redone;
    // one image changed, the run trains again.
    let moved = scratch_dir.with_extension("moved");
    let _ = std::fs::remove_dir_all(&moved);
    std::fs::rename(&scratch_dir, &moved).unwrap();
    s.edit_config(
        &format!("path = {:?}", scratch_dir.display().to_string()),
        &format!("path = {:?}", moved.display().to_string()),
    );
    for stage in STAGES {
        let log = s.ok(stage, &[]);
        assert!(log.contains("nothing to do") || log.contains("up to date"), "{stage} after moving the data:\n{log}");
    }
    std::fs::rename(&moved, &scratch_dir).unwrap();
    s.edit_config(
        &format!("path = {:?}", moved.display().to_string()),
        &format!("path = {:?}", scratch_dir.display().to_string()),
    );
    let image = scratch_dir.join("train/class-03/00003.png");
    let mut pixels = image::open(&image).unwrap().to_rgb8();
    pixels.put_pixel(0, 0, image::Rgb([255, 0, 0]));
    pixels.save(&image).unwrap();
    let log = s.ok("trainer", &["--dry-run"]);
    assert!(log.contains("1 unit(s) to do"), "a changed image retrains:\n{log}");

    // A file of the wrong shape is an error naming it.
    image_of_wrong_size(&scratch_dir.join("train/class-03/zz.png"));
    let err = s.fails("trainer", &["--force"]);
    assert!(err.contains("zz.png") && err.contains("image is 1x4x4, the data set declares 3x32x32"), "{err}");
}

/// A 4x4 grey PNG (the data set's images are 3x32x32).
fn image_of_wrong_size(path: &Path) {
    let set = common::data::ImageSet {
        shape: common::data::ImageShape { channels: 1, height: 4, width: 4 },
        pixels: vec![9; 16],
        labels: vec![0],
    };
    let dir = common::scratch::ScratchDir::new("wrong-size");
    common::data::write_image_folder(&dir, &common::data::Dataset { train: set.clone(), test: set, classes: 1 }).unwrap();
    std::fs::rename(dir.join("train/class-00/00000.png"), path).unwrap();
}

/// A folder as a training loop elsewhere writes it: a state_dict of the
/// simple model at steps 0, 5 and 10 (written by our own checkpoint writer,
/// weights of three seeds) and a metrics CSV.
fn write_external_run(dir: &Path) {
    let checkpoints = dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    let architecture = common::architecture::ModelKind::Simple.architecture(10);
    for (k, step) in [0u64, 5, 10].into_iter().enumerate() {
        let model = engine::Model::initialized(&architecture, common::data::ImageShape::GRAY_28, k as u64).unwrap();
        let info = common::artifacts::CheckpointInfo {
            run: "elsewhere".into(),
            step,
            epoch: 0.0,
            dataset: "theirs".into(),
            fingerprint: "theirs".into(),
        };
        engine::write_checkpoint(&checkpoints.join(format!("step-{step}.safetensors")), &model, &info).unwrap();
    }
    std::fs::write(dir.join("metrics.csv"), "step,epoch,train_loss,train_acc\n0,0,2.30,0.1\n5,0.5,1.9,0.3\n10,1,1.5,0.5\n")
        .unwrap();
}

/// `configs/external-run.toml` on synthetic data, beside a run the trainer
/// trains: the imported run is explained, summarised and analysed like the
/// trained one; a second pass does nothing; a changed checkpoint re-imports;
/// a wrong tensor name, a wrong shape or a step missing from the metrics
/// fails that run naming the file, the tensor and the problem, while the
/// other run completes.
#[test]
fn a_run_trained_elsewhere_is_imported_and_explained_like_any_run() {
    let text = std::fs::read_to_string(workspace_root().join("configs/external-run.toml")).expect("configs/external-run.toml");
    let external = common::scratch::ScratchDir::new("pipeline-e2e-external-data");
    write_external_run(&external);
    let mut config = text;
    for (from, to) in [
        ("dir = \"runs/external-run\"", "dir = \"@OUT@\"".to_string()),
        (
            "kind = \"idx\"\npath = \"data/fashion-mnist\"",
            "kind = \"synthetic\"\nshape = \"1x28x28\"\ntrain_size = 200\ntest_size = 100\nseed = 7".to_string(),
        ),
        ("seen_per_class = 5\nunseen_per_class = 5", "seen_per_class = 1\nunseen_per_class = 1".to_string()),
        ("\"data/external-run/checkpoints\"", format!("{:?}", external.join("checkpoints").display().to_string())),
        ("\"data/external-run/metrics.csv\"", format!("{:?}", external.join("metrics.csv").display().to_string())),
    ] {
        assert!(config.contains(from), "configs/external-run.toml has no `{from}`");
        config = config.replacen(from, &to, 1);
    }
    config.push_str(
        "\n[runs.trained]\ndataset = \"fmnist\"\nmodel = \"simple\"\nepochs = 1\nbatch_size = 50\ncheckpoints = { every = 2 }\n",
    );
    let s = Scratch::with_config("external", &config);
    run_pipeline(&s);
    let run = s.out().join("torch-simple");
    for step in [0, 5, 10] {
        let maps = read_attributions(&run.join(format!("attributions/lrp/step-{step:06}.safetensors"))).unwrap();
        assert_eq!(maps.probe_id.len(), 20);
        assert!(maps.maps.iter().any(|&v| v != 0.0));
    }
    let metrics = common::artifacts::tables::metrics::read_metrics(&run.join("metrics.parquet")).unwrap();
    assert_eq!(metrics.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 5, 10]);
    assert_eq!((metrics[1].train_loss, metrics[1].epoch), (1.9, 0.5), "the loop's records are kept");
    assert!(metrics.iter().all(|r| r.test_loss.is_finite() && r.probe_loss.is_finite()), "evaluated here");
    let report = std::fs::read_to_string(s.out().join("analysis/report.md")).unwrap();
    assert!(report.contains("torch-simple"), "{report}");

    for stage in STAGES {
        let log = s.ok(stage, &[]);
        assert!(log.contains("nothing to do") || log.contains("up to date"), "{stage} did work on a rerun:\n{log}");
    }
    // Another checkpoint in the folder's place: imported again.
    let step5 = external.join("checkpoints/step-5.safetensors");
    std::fs::copy(external.join("checkpoints/step-10.safetensors"), &step5).unwrap();
    let log = s.ok("trainer", &["--dry-run"]);
    assert!(log.contains("1 unit(s) to do"), "{log}");

    // Broken folders fail the run, naming the problem; the other run is fine.
    let original = std::fs::read(&step5).unwrap();
    let mut file = read_tensors(&step5).unwrap();
    let bias = file.tensors.remove("fc1.bias").unwrap();
    file.tensors.insert("fc1.offset".into(), bias.clone());
    common::artifacts::write_tensors(&step5, &file).unwrap();
    let err = s.fails("trainer", &["--force"]);
    assert!(err.contains("step-5.safetensors") && err.contains("fc1.offset"), "{err}");
    assert!(err.contains("1 unit(s) failed, 1 done"), "the trained run still completes:\n{err}");

    file.tensors.remove("fc1.offset");
    file.tensors.insert("fc1.bias".into(), common::artifacts::TensorData::F32 { shape: vec![11], data: vec![0.0; 11] });
    common::artifacts::write_tensors(&step5, &file).unwrap();
    let err = s.fails("trainer", &["--run", "torch-simple"]);
    assert!(err.contains("step-5.safetensors") && err.contains("`fc1.bias` has shape [11], expected [10]"), "{err}");

    std::fs::write(&step5, original).unwrap();
    std::fs::write(external.join("metrics.csv"), "step,train_loss\n0,2.3\n10,1.5\n").unwrap();
    let err = s.fails("trainer", &["--run", "torch-simple"]);
    assert!(err.contains("step-5.safetensors: step 5 is missing from the metrics file"), "{err}");

    // `step` alone is enough: the epochs are unknown (NaN) and the loss on
    // fixed training images stands in for the training loss.
    std::fs::write(external.join("metrics.csv"), "step\n0\n5\n10\n").unwrap();
    run_pipeline(&s);
    let metrics = common::artifacts::tables::metrics::read_metrics(&run.join("metrics.parquet")).unwrap();
    assert!(metrics[1].epoch.is_nan() && metrics[1].train_loss == metrics[1].train_eval_loss);
    let _ = std::fs::remove_dir_all(&external);
}

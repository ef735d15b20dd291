//! Writes the synthetic data set as an image folder (PNG files in
//! `<dir>/train/class-<k>/` and `<dir>/test/class-<k>/`), the layout of data
//! sets of kind `image-folder`; `configs/image-folder.toml` reads it:
//!
//!     cargo run --release -p common --example synthetic-image-folder -- data/synthetic-folder

use common::data::{synthetic, write_image_folder, Dataset, ImageShape};

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: synthetic-image-folder DIR");
        return std::process::ExitCode::from(2);
    };
    let shape = ImageShape::RGB_32;
    let dataset = Dataset { train: synthetic(shape, 1000, 7), test: synthetic(shape, 300, 8), classes: 10 };
    match write_image_folder(std::path::Path::new(&dir), &dataset) {
        Ok(()) => {
            println!("wrote {} training and {} test images to {dir}", dataset.train.len(), dataset.test.len());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synthetic-image-folder: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

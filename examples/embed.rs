//! Kiln as a library: compile `examples/xor.kiln`, train it from Rust with a callback per
//! epoch, predict, and save a checkpoint. Run it with `cargo run --example embed`.

use ndarray::{array, ArrayD};

pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = kiln::compile_file("examples/xor.kiln")?;
    println!("{}", model.summary());
    // The seed of the example's train block: two ReLU units train with it.
    let mut session = model.session(8)?;
    let x: ArrayD<f32> = array![[0., 0.], [0., 1.], [1., 0.], [1., 1.]].into_dyn();
    let y: ArrayD<f32> = array![[0.], [1.], [1.], [0.]].into_dyn();
    let report = session.train(&[("x", &x)], &[("y", &y)], |epoch| {
        if epoch.epoch % 100 == 0 {
            println!("epoch {:>3}  loss {:.6}", epoch.epoch, epoch.train_loss);
        }
    })?;
    println!("trained {} epochs, {} steps", report.epochs, report.steps);
    let out = session.predict(&[("x", &x)])?;
    for (row, v) in x.outer_iter().zip(out.iter()) {
        println!("{} xor {} = {:.3}", row[0], row[1], v);
    }
    let rounded: Vec<f32> = out.iter().map(|v| v.round()).collect();
    if rounded != [0.0, 1.0, 1.0, 0.0] {
        return Err(format!("XOR not learned: {out}").into());
    }
    let path = std::env::temp_dir().join(format!("kiln-embed-{}.safetensors", std::process::id()));
    session.save(&path)?;
    println!("checkpoint: {}", path.display());
    std::fs::remove_file(&path)?;
    Ok(())
}

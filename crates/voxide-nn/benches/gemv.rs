//! Throughput of the f16 GEMV kernel on Whisper-tiny decoder shapes, in GB/s of weights read
//! (compare with the machine's read bandwidth: ~26 GB/s on 1 thread, ~33 GB/s on 2 here).
//! `cargo bench -p voxide-nn --bench gemv`

use half::f16;
use std::time::Instant;
use voxide_nn::kernels::gemv::gemv_f16;

fn main() {
    for &(name, n, k) in &[
        ("lm head 51865x384", 51865usize, 384usize),
        ("mlp fc1 1536x384", 1536, 384),
        ("attn 384x384", 384, 384),
    ] {
        let w: Vec<f16> = (0..n * k)
            .map(|i| f16::from_f32((i % 97) as f32 / 97.0 - 0.5))
            .collect();
        let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 / 13.0).collect();
        let mut y = vec![0f32; n];
        let reps = (200_000_000 / (n * k)).max(10);
        for _ in 0..3 {
            gemv_f16(&x, &w, None, &mut y, 1, k, n);
        }
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                gemv_f16(&x, &w, None, &mut y, 1, k, n);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{name:20} {:8.1} us  {:6.1} GB/s",
            median * 1e6,
            (n * k * 2) as f64 / median / 1e9
        );
    }
}

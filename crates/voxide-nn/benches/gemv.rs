//! Throughput of the narrow-weight kernels at Voxtral Mini 4B Realtime decoder shapes, in GB/s
//! of weights read, against the machine's measured read bandwidth (~26 GB/s on 1 thread, ~33 on
//! 2 here), and a synthetic decoder step (26 layers × 7 matrices + the 131072×3072 head) against
//! its floor (bytes / bandwidth).
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p voxide-nn --bench gemv [-- SECTION...]`
//! Sections: `bandwidth`, `gemv`, `isa`, `l2`, `candle`, `small`, `crossover`, `whisper`,
//! `whisper-step`, `rows`, `row-bytes`, `int8-chunks`, `int8-prompt`, `attention`, `step`,
//! `step-int8`, `tts-frame`, `thin`, `winograd`, `codec-convs`, `quant`, `quant-encoder`,
//! `quant-l2`
//! (all by default; `quant` and `quant-l2` take extra words: ggml type names to run, e.g. `quant q4_0 q4_K`). Figures: median [min–max] of the timed repetitions after a warm-up.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use std::time::Instant;
use voxide_nn::kernels::attention::DecodeAttention;
use voxide_nn::kernels::bandwidth::{streaming_reads, ReadProbe};
use voxide_nn::kernels::convert::{quantize_int8, to_f32};
use voxide_nn::kernels::gemv::{gemv, gemv_on, WeightMatrix};
use voxide_nn::kernels::machine::Residency;
use voxide_nn::kernels::ops::{SoftmaxLastDimInPlace, WidenToF32};
use voxide_nn::kernels::quant_gemm::{has_gemm_kernel, quant_gemm};
use voxide_nn::kernels::quant_matmul::{quant_gemv, quant_gemv_on, QuantMatrix};
use voxide_nn::kernels::simd::{Isa, WeightElem};
use voxide_nn::kernels::small_m::{
    f16_tiles, matmul_f16_tiles, matmul_rows_alike, matmul_small, matmul_small_on,
};
use voxide_nn::kernels::spin_pool::for_each_task;
use voxide_nn::kernels::widen_gemm::matmul_widened;
use voxide_nn::linear::WeightFormat;
use voxide_nn::quant::{quantize_row, GgmlType};
use voxide_nn::Linear;

/// (median, min, max) seconds of `reps` calls after `warm` untimed ones.
fn time(warm: usize, reps: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..warm {
        f();
    }
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0], t[t.len() - 1])
}

fn report(name: &str, bytes: usize, (med, min, max): (f64, f64, f64)) {
    println!(
        "{name:44} {:9.3} ms [{:.3}–{:.3}]  {:6.1} GB/s",
        med * 1e3,
        min * 1e3,
        max * 1e3,
        bytes as f64 / med / 1e9
    );
}

/// Deterministic normal-range values in [-0.5, 0.5).
fn value(i: usize) -> f32 {
    ((i.wrapping_mul(2654435761) >> 7) % 1000) as f32 / 1000.0 - 0.5
}

fn filled<E: Copy + Send + Sync>(len: usize, f: impl Fn(f32) -> E + Sync) -> Vec<E> {
    let mut v = Vec::with_capacity(len);
    v.par_extend((0..len).into_par_iter().map(|i| f(value(i))));
    v
}

/// One matrix in the three formats.
struct Formats {
    f16: Vec<f16>,
    bf16: Vec<bf16>,
    q: Vec<i8>,
    scales: Vec<f32>,
}

impl Formats {
    fn new(n: usize, k: usize) -> Self {
        let (q, scales) = quantize_int8(n, k, value);
        Self {
            f16: filled(n * k, f16::from_f32),
            bf16: filled(n * k, bf16::from_f32),
            q,
            scales,
        }
    }
}

const SHAPES: &[(&str, usize, usize)] = &[
    ("wo/attn 3072x3072", 3072, 3072),
    ("w1/w3 9216x3072", 9216, 3072),
    ("w2 3072x9216", 3072, 9216),
    ("head 131072x3072", 131072, 3072),
];

fn reps_for(bytes: usize) -> usize {
    (4_000_000_000 / bytes).clamp(5, 200)
}

/// m = 1 on each shape and format. The timed calls rotate over copies of the matrix that
/// together exceed the 32 MB L3, so that every call reads its weights from DRAM as in a
/// decoder step.
fn bench_gemv(isa: Option<Isa>, shapes: &[(&str, usize, usize)]) {
    for &(name, n, k) in shapes {
        let copies = if name.starts_with("l2") {
            1
        } else {
            ((256 << 20) / (n * k)).max(1)
        };
        let f: Vec<Formats> = (0..copies).map(|_| Formats::new(n, k)).collect();
        let x: Vec<f32> = (0..k).map(value).collect();
        let mut y = vec![0f32; n];
        let tag = isa.map_or(String::new(), |i| format!(" {i:?}"));
        let mut run = |fmt: &str, bytes: usize, g: &mut dyn FnMut(usize, &mut [f32])| {
            let mut c = 0;
            report(
                &format!("gemv m=1 {fmt}{tag} {name}"),
                bytes,
                time(copies.max(3), reps_for(bytes).max(copies), || {
                    g(c % copies, &mut y);
                    c += 1;
                }),
            )
        };
        fn go<E: WeightElem>(isa: Option<Isa>, x: &[f32], w: &WeightMatrix<E>, y: &mut [f32]) {
            match isa {
                Some(i) => gemv_on(i, x, w, None, y, 1),
                None => gemv(x, w, None, y, 1),
            }
        }
        run("f16 ", n * k * 2, &mut |c, y| {
            go(isa, &x, &WeightMatrix::new(&f[c].f16, n, k), y)
        });
        run("bf16", n * k * 2, &mut |c, y| {
            go(isa, &x, &WeightMatrix::new(&f[c].bf16, n, k), y)
        });
        run("int8", n * k + n * 4, &mut |c, y| {
            go(
                isa,
                &x,
                &WeightMatrix::with_scales(&f[c].q, &f[c].scales, n, k),
                y,
            )
        });
    }
}

/// candle's own paths, as Linear ran them before the narrow kernels: a bf16 weight widened to
/// f32 by `to_dtype` on every call, then candle's f32 matmul; candle's f16 matmul.
fn bench_candle() -> candle_core::Result<()> {
    let (n, k) = (9216, 3072);
    let dev = Device::Cpu;
    let w = Tensor::from_vec(filled(n * k, |v| v), (n, k), &dev)?;
    let wb = w.to_dtype(DType::BF16)?;
    let wh = w.to_dtype(DType::F16)?;
    let x = Tensor::from_vec((0..k).map(value).collect::<Vec<f32>>(), (1, k), &dev)?;
    let bytes = n * k * 2;
    report(
        "candle bf16: to_dtype(f32) + matmul, m=1",
        bytes,
        time(1, 5, || {
            x.matmul(&wb.to_dtype(DType::F32).unwrap().t().unwrap())
                .unwrap();
        }),
    );
    let xh = x.to_dtype(DType::F16)?;
    report(
        "candle f16 matmul (x in f16), m=1",
        bytes,
        time(2, 10, || {
            xh.matmul(&wh.t().unwrap()).unwrap();
        }),
    );
    for (fmt, tag) in [
        (WeightFormat::Bf16, "bf16"),
        (WeightFormat::F16, "f16 "),
        (WeightFormat::Int8, "int8"),
    ] {
        let layer = Linear::from_weights(w.clone(), None).to_format(fmt)?;
        let b = if fmt == WeightFormat::Int8 {
            n * k
        } else {
            bytes
        };
        report(
            &format!("Linear::forward {tag}, m=1"),
            b,
            time(3, 20, || {
                layer.forward(&x).unwrap();
            }),
        );
    }
    Ok(())
}

/// Small-M kernel against widen + GEMM (the path above SMALL_M_MAX_ROWS) at 9216×3072.
fn bench_small(ms: &[usize]) -> candle_core::Result<()> {
    let (n, k) = (9216, 3072);
    let f = Formats::new(n, k);
    let dev = Device::Cpu;
    for &m in ms {
        let x: Vec<f32> = (0..m * k).map(|i| value(i + 7)).collect();
        let mut y = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let show = |name: &str, bytes: usize, t: (f64, f64, f64)| {
            report(name, bytes, t);
            println!("{:44} {:9.1} GFLOP/s", "", flops / t.0 / 1e9);
        };
        let wf = WeightMatrix::new(&f.f16, n, k);
        show(
            &format!("small-M m={m} f16 9216x3072"),
            n * k * 2,
            time(2, 10, || matmul_small(&x, &wf, None, &mut y, m)),
        );
        let wb = WeightMatrix::new(&f.bf16, n, k);
        show(
            &format!("small-M m={m} bf16 9216x3072"),
            n * k * 2,
            time(2, 10, || matmul_small(&x, &wb, None, &mut y, m)),
        );
        // An encoder's (chunk-invariant) layers: bf16 dot products where the CPU has them.
        show(
            &format!("rows alike m={m} bf16 9216x3072"),
            n * k * 2,
            time(2, 10, || matmul_rows_alike(&x, &wb, None, &mut y, m)),
        );
        let wi = WeightMatrix::with_scales(&f.q, &f.scales, n, k);
        show(
            &format!("small-M m={m} int8 9216x3072"),
            n * k,
            time(2, 10, || matmul_small(&x, &wi, None, &mut y, m)),
        );
        // What Linear runs above SMALL_M_MAX_ROWS: widen (kernel, all threads, into a fresh
        // buffer) + candle's f32 GEMM; and before this work: candle's to_dtype + GEMM.
        let xt = Tensor::from_vec(x.clone(), (m, k), &dev)?;
        let tb = Tensor::from_slice(&f.bf16, (n, k), &dev)?;
        show(
            &format!("widen+GEMM m={m} bf16 9216x3072"),
            n * k * 2,
            time(1, 5, || {
                let wt = tb.apply_op1_no_bwd(&WidenToF32).unwrap();
                xt.matmul(&wt.t().unwrap()).unwrap();
            }),
        );
        show(
            &format!("to_dtype+GEMM m={m} bf16 (before)"),
            n * k * 2,
            time(1, 3, || {
                xt.matmul(&tb.to_dtype(DType::F32).unwrap().t().unwrap())
                    .unwrap();
            }),
        );
        let wt = tb.to_dtype(DType::F32)?;
        show(
            &format!("  GEMM alone m={m} (f32 weights)"),
            n * k * 4,
            time(1, 5, || {
                xt.matmul(&wt.t().unwrap()).unwrap();
            }),
        );
        let layer = Linear::from_weights(tb.clone(), None);
        show(
            &format!("Linear::forward m={m} bf16"),
            n * k * 2,
            time(1, 5, || {
                layer.forward(&xt).unwrap();
            }),
        );
    }
    // The widening alone: kernel vs candle's to_dtype.
    let mut wide = vec![0f32; n * k];
    let wb = WeightMatrix::new(&f.bf16, n, k);
    report(
        "widen bf16→f32 (kernel) 9216x3072",
        n * k * 6,
        time(2, 10, || to_f32(&wb, &mut wide)),
    );
    let tb = Tensor::from_slice(&f.bf16, (n, k), &dev)?;
    report(
        "widen bf16→f32 (candle to_dtype) 9216x3072",
        n * k * 6,
        time(1, 5, || {
            tb.to_dtype(DType::F32).unwrap();
        }),
    );
    Ok(())
}

/// Small-M kernel against widen + GEMM at Whisper encoder shapes (f16: tiny, base and
/// large-v3-turbo's widths), and the AMX tiles in bf16 parts where the CPU has them.
fn bench_whisper() -> candle_core::Result<()> {
    let shapes = [
        (384, 384),
        (1536, 384),
        (384, 1536),
        (2048, 512),
        (1280, 1280),
        (5120, 1280),
        (1280, 5120),
    ];
    bench_encoder_shapes("f16", &shapes, &[64, 256, 1500], f16::from_f32)
}

/// The products of a Voxtral encoder (Whisper large-v3's widths: d = 1280, an MLP of 5120;
/// Voxtral Realtime runs blocks of 256 positions, 48 in a live stream, Voxtral Mini 3B windows
/// of 1500) in bf16,
/// the checkpoints' type: its chunk-invariant layers' kernel (bf16 dot products where the CPU
/// has them) against widen + GEMM.
fn bench_voxtral_encoder() -> candle_core::Result<()> {
    let shapes = [(3840, 1280), (1280, 1280), (10240, 1280), (1280, 5120)];
    bench_encoder_shapes("bf16", &shapes, &[48, 256, 1500], bf16::from_f32)
}

/// A Voxtral Mini 3B prompt's products (d = 3072: q/k/v stacked, o, gate/up stacked, down)
/// in bf16 at a 30 s window's 390 positions and at 1 and 3 windows' worth: matrices of 25–100
/// MB, read from memory (a 27 MB matrix of `crossover` stays in a 32 MB L3 between runs).
fn bench_voxtral_prefill() -> candle_core::Result<()> {
    let shapes = [(6144, 3072), (3072, 4096), (16384, 3072), (3072, 8192)];
    bench_encoder_shapes("bf16", &shapes, &[390, 1140], bf16::from_f32)
}

/// An encoder window's attention (Whisper large-v3 / Voxtral Mini 3B: 20 heads, 1500
/// positions, head dim 64) for one layer: the f32 path (q·Kᵀ and P·V on candle's GEMM, in
/// chunks of 1 M scores as `Attention` runs them) against every form of the kernel of many
/// rows the CPU runs (f32 with AVX-512 or AVX2, bf16 with AVX512-BF16).
fn bench_attention_shapes() -> candle_core::Result<()> {
    let (heads, s, d) = (20, 1500, 64);
    let dev = Device::Cpu;
    let filled = |seed: usize, scale: f32| -> candle_core::Result<Tensor> {
        let x: Vec<f32> = (0..heads * s * d)
            .map(|i| value(i + seed) * scale)
            .collect();
        Tensor::from_vec(x, (1, heads, s, d), &dev)
    };
    let (q, k, v) = (filled(1, 0.125)?, filled(2, 1.0)?, filled(3, 1.0)?);
    let flops = 4.0 * (heads * s * s * d) as f64;
    // A window's 1500 × 1500 scores exceed the 1 M of a chunk: one head at a time, in rows.
    let rows_per_chunk = (1 << 20) / s;
    let f32_path = time(1, 5, || {
        for h in 0..heads {
            let (k, v) = (k.narrow(1, h, 1).unwrap(), v.narrow(1, h, 1).unwrap());
            let kt = k.transpose(2, 3).unwrap();
            for r0 in (0..s).step_by(rows_per_chunk) {
                let q = q
                    .narrow(1, h, 1)
                    .unwrap()
                    .narrow(2, r0, rows_per_chunk.min(s - r0))
                    .unwrap();
                let p = q.matmul(&kt).unwrap();
                p.inplace_op1(&SoftmaxLastDimInPlace).unwrap();
                std::hint::black_box(p.matmul(&v).unwrap());
            }
        }
    });
    report_flops("encoder attention: f32 GEMMs", flops, f32_path);
    // The kernel's forms are x86-64's.
    #[cfg(target_arch = "x86_64")]
    {
        use voxide_nn::kernels::attention_many_rows::{ManyRowsAttention, Products};
        for products in [Products::F32, Products::Bf16] {
            for op in ManyRowsAttention::every_form(products, d) {
                let kernel = time(1, 5, || {
                    std::hint::black_box(q.apply_op3_no_bwd(&k, &v, &op).unwrap());
                });
                report_flops(&format!("encoder attention: {op}"), flops, kernel);
            }
        }
    }
    Ok(())
}

fn report_flops(name: &str, flops: f64, (med, min, max): (f64, f64, f64)) {
    println!(
        "{name:48} {:8.3} ms [{:.3}–{:.3}] {:6.1} GFLOP/s",
        med * 1e3,
        min * 1e3,
        max * 1e3,
        flops / med / 1e9
    );
}

/// The small-M kernel an encoder's layers take ([`matmul_rows_alike`]: for f16, small-M
/// itself) against widen + GEMM on `shapes` (n, k) at each m of `ms`.
fn bench_encoder_shapes<E: WeightElem + Copy + Send + Sync + candle_core::WithDType>(
    name: &str,
    shapes: &[(usize, usize)],
    ms: &[usize],
    to: impl Fn(f32) -> E + Sync,
) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(n, k) in shapes {
        let w: Vec<E> = filled(n * k, &to);
        let wm = WeightMatrix::new(&w, n, k);
        let tw = Tensor::from_slice(&w, (n, k), &dev)?;
        for &m in ms {
            let x: Vec<f32> = (0..m * k).map(value).collect();
            let mut y = vec![0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let reps = (2e10 / flops).clamp(5.0, 200.0) as usize;
            let t = time(2, reps, || matmul_rows_alike(&x, &wm, None, &mut y, m));
            // f16 on AMX tiles in bf16 parts, where the CPU has them.
            if let Some(data) = E::as_f16(&w).filter(|_| f16_tiles(m, k)) {
                let tiles = time(2, reps, || {
                    matmul_f16_tiles(&x, &wm.as_elements(data), None, &mut y, m)
                });
                println!(
                    "{name} {n:5}x{k:<5} m={m:5}: tiles in parts {:8.3} ms ({:5.1} GFLOP/s)",
                    tiles.0 * 1e3,
                    flops / tiles.0 / 1e9
                );
            }
            let xt = Tensor::from_vec(x.clone(), (m, k), &dev)?;
            let g = time(2, reps, || {
                let wt = tw.apply_op1_no_bwd(&WidenToF32).unwrap();
                xt.matmul(&wt.t().unwrap()).unwrap();
            });
            println!(
                "{name} {n:5}x{k:<5} m={m:5}: small-M {:8.3} ms ({:5.1} GFLOP/s), widen+GEMM {:8.3} ms ({:5.1} GFLOP/s)",
                t.0 * 1e3,
                flops / t.0 / 1e9,
                g.0 * 1e3,
                flops / g.0 / 1e9
            );
        }
    }
    Ok(())
}

/// The GEMVs of a Whisper decoder step in f16 (tiny, base, small, large-v3-turbo shapes:
/// head, then per layer 4 self- and 2 cross-attention projections and fc1/fc2), read as the
/// machine's residency plan says and, for comparison, all cached / all streamed; plus the
/// head alone and the layers alone.
fn bench_whisper_step() {
    use voxide_nn::kernels::machine::{machine, plan_residency, CycleRead};
    let budget = machine().cache_budget();
    println!(
        "cache budget {} MB (L2 {} KB/core, L3 {} MB, {} cores)",
        budget >> 20,
        machine().caches.l2_per_core >> 10,
        machine().caches.l3 >> 20,
        machine().cores
    );
    for (name, d, layers, vocab) in [
        ("tiny", 384usize, 4usize, 51865usize),
        ("base", 512, 6, 51865),
        ("small", 768, 12, 51865),
        ("turbo", 1280, 4, 51866),
    ] {
        let mut shapes = vec![(vocab, d)];
        for _ in 0..layers {
            shapes.extend([(d, d); 6]);
            shapes.extend([(4 * d, d), (d, 4 * d)]);
        }
        let ws: Vec<Vec<f16>> = shapes
            .iter()
            .map(|&(n, k)| filled(n * k, f16::from_f32))
            .collect();
        let bytes: Vec<usize> = shapes.iter().map(|&(n, k)| 2 * n * k).collect();
        let kv = layers * 2 * 1500 * d * 2;
        let reads: Vec<CycleRead> = bytes.iter().map(|&b| CycleRead::once(b)).collect();
        let plan = plan_residency(&reads, kv, budget);
        let total: usize = bytes.iter().sum();
        let x: Vec<f32> = (0..4 * d).map(value).collect();
        let mut y = vec![0f32; vocab];
        let mut run = |which: &dyn Fn(usize) -> bool, res: &dyn Fn(usize) -> Residency| {
            time(3, 20, || {
                for (i, &(n, k)) in shapes.iter().enumerate() {
                    if which(i) {
                        let w = WeightMatrix::new(&ws[i], n, k).with_residency(res(i));
                        gemv(&x[..k], &w, None, &mut y[..n], 1);
                    }
                }
            })
        };
        let streamed: usize = bytes
            .iter()
            .zip(&plan)
            .filter(|(_, r)| **r == Residency::Streamed)
            .map(|(b, _)| b)
            .sum();
        println!(
            "whisper-{name}: step GEMVs {:.1} MB (+{:.1} MB K/V), plan streams {:.1} MB",
            total as f64 / 1e6,
            kv as f64 / 1e6,
            streamed as f64 / 1e6
        );
        let all = |_: usize| true;
        report("  step, planned", total, run(&all, &|i| plan[i]));
        report(
            "  step, all cached",
            total,
            run(&all, &|_| Residency::Cached),
        );
        report(
            "  step, all streamed",
            total,
            run(&all, &|_| Residency::Streamed),
        );
        report(
            "  head alone, planned",
            bytes[0],
            run(&|i| i == 0, &|i| plan[i]),
        );
        report(
            "  layers alone, planned",
            total - bytes[0],
            run(&|i| i > 0, &|i| plan[i]),
        );
    }
}

/// int8 products of 2–128 rows: the small-M kernel (on AMX tiles where the CPU has them)
/// against the GEMV in chunks of 8 rows (the dispatch's `int8_gemv_max_rows`).
fn bench_int8_chunks() {
    for (n, k) in [(9216usize, 3072usize), (3072, 1024), (1024, 3072)] {
        let (q, sc) = quantize_int8(n, k, value);
        let wq = WeightMatrix::with_scales(&q, &sc, n, k);
        for m in [2usize, 4, 6, 8, 9, 12, 16, 24, 32, 48, 64, 128] {
            let x: Vec<f32> = (0..m * k).map(value).collect();
            let mut y = vec![0f32; m * n];
            let a = time(3, 20, || matmul_small(&x, &wq, None, &mut y, m));
            let b = time(3, 20, || {
                for (xc, yc) in x.chunks(8 * k).zip(y.chunks_mut(8 * n)) {
                    gemv(xc, &wq, None, yc, xc.len() / k)
                }
            });
            println!(
                "int8 {n}x{k} m={m}: small-M {:.3} ms, gemv×8 {:.3} ms",
                a.0 * 1e3,
                b.0 * 1e3
            );
        }
    }
}

/// int8 prompts and encoder windows: each integer small-M kernel this CPU runs (AMX tiles,
/// AVX-512 VNNI, AVX-VNNI, AVX2: the same bits), at Voxtral Mini 3B's decoder and encoder
/// shapes and Qwen3-TTS 0.6B's talker shapes, from a chunk's rows to a window's, in GFLOP/s.
fn bench_int8_prompt() {
    use voxide_nn::kernels::small_m_int8::{matmul, Kernel};
    let kernels = Kernel::on_this_cpu();
    if kernels.is_empty() {
        println!("no integer small-M kernel runs here");
        return;
    }
    let shapes = [
        ("3B decoder", 6144usize, 3072usize, &[24usize, 390][..]),
        ("3B decoder", 16384, 3072, &[24, 390]),
        ("3B decoder", 3072, 8192, &[24, 390]),
        ("3B encoder", 3840, 1280, &[1500]),
        ("3B encoder", 5120, 1280, &[1500]),
        ("3B encoder", 1280, 5120, &[1500]),
        ("TTS talker", 4096, 1024, &[12, 28, 54, 253]),
        ("TTS talker", 6144, 1024, &[12, 28, 54, 253]),
        ("TTS talker", 1024, 2048, &[12, 28, 54, 253]),
        ("TTS talker", 1024, 3072, &[12, 28, 54, 253]),
    ];
    for (name, n, k, ms) in shapes {
        let (q, sc) = quantize_int8(n, k, value);
        let wq = WeightMatrix::with_scales(&q, &sc, n, k);
        for &m in ms {
            let x: Vec<f32> = (0..m * k).map(value).collect();
            let mut y = vec![0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let reps = (2e10 / flops).clamp(5.0, 100.0) as usize;
            let timed: Vec<String> = kernels
                .iter()
                .map(|&kernel| {
                    let t = time(2, reps, || matmul(kernel, &x, &wq, None, &mut y, m));
                    format!(
                        "{kernel:?} {:8.3} ms ({:6.1} GFLOP/s)",
                        t.0 * 1e3,
                        flops / t.0 / 1e9
                    )
                })
                .collect();
            println!("int8 {name} {n:5}x{k:<5} m={m:5}: {}", timed.join(", "));
        }
    }
}

/// GEMV against the small-M kernel at the GEMV's row counts (bf16 9216×3072), and the int8
/// GEMV at them (the steps of concurrent streams taken together).
fn bench_rows() {
    // A Voxtral decoder's MLP matrix, and a Qwen3-TTS 0.6B layer's gate and up projections
    // (what a batch of concurrent speech requests multiplies).
    for (n, k) in [(9216, 3072), (6144, 1024)] {
        let shape = format!("{n}x{k}");
        let w: Vec<bf16> = filled(n * k, bf16::from_f32);
        let wb = WeightMatrix::new(&w, n, k);
        let (q, sc) = quantize_int8(n, k, value);
        let wq = WeightMatrix::with_scales(&q, &sc, n, k);
        // Copies that together exceed the L3.
        let copies = (280usize << 20).div_ceil(n * k);
        let dram: Vec<Vec<i8>> = (0..copies).map(|_| q.clone()).collect();
        for m in [1usize, 2, 3, 4, 8, 9] {
            let x: Vec<f32> = (0..m * k).map(value).collect();
            let mut y = vec![0f32; m * n];
            if m <= 8 {
                report(
                    &format!("gemv    m={m} bf16 {shape}"),
                    n * k * 2,
                    time(3, 30, || gemv(&x, &wb, None, &mut y, m)),
                );
                report(
                    &format!("gemv    m={m} int8 {shape}"),
                    n * k + n * 4,
                    time(3, 30, || gemv(&x, &wq, None, &mut y, m)),
                );
                let mut c = 0;
                report(
                    &format!("gemv    m={m} int8 {shape} ×{copies}, from DRAM"),
                    n * k + n * 4,
                    time(copies, 60, || {
                        let w = WeightMatrix::with_scales(&dram[c % copies], &sc, n, k);
                        gemv(&x, &w, None, &mut y, m);
                        c += 1;
                    }),
                );
            }
            report(
                &format!("small-M m={m} bf16 {shape}"),
                n * k * 2,
                time(3, 30, || matmul_small(&x, &wb, None, &mut y, m)),
            );
        }
    }
}

/// bf16 and int8 GEMVs (m = 1, streamed, 2 threads) over 201 MB matrices with rows of 3, 6 and
/// 12 KB, calls alternating over 11 rounds: does an int8 step read slower for its type or for
/// its shorter rows (3 KB at k = 3072, where bf16's are 6 KB)?
fn bench_row_bytes() {
    const BYTES: usize = 3 << 26;
    const ROW_BYTES: [usize; 3] = [3 << 10, 6 << 10, 12 << 10];
    let bf: Vec<(Vec<bf16>, usize, usize)> = ROW_BYTES
        .iter()
        .map(|&rb| (filled(BYTES / 2, bf16::from_f32), BYTES / rb, rb / 2))
        .collect();
    let q: Vec<(Vec<i8>, Vec<f32>, usize, usize)> = ROW_BYTES
        .iter()
        .map(|&rb| {
            let (q, s) = quantize_int8(BYTES / rb, rb, value);
            (q, s, BYTES / rb, rb)
        })
        .collect();
    let x: Vec<f32> = (0..12 << 10).map(value).collect();
    let mut y = vec![0f32; BYTES / ROW_BYTES[0]];
    let mut gbps = vec![vec![]; 2 * ROW_BYTES.len()];
    for _ in 0..11 {
        for (i, g) in gbps.iter_mut().enumerate() {
            let t = Instant::now();
            if let Some((w, n, k)) = bf.get(i) {
                let w = WeightMatrix::new(w, *n, *k).with_residency(Residency::Streamed);
                gemv(&x[..*k], &w, None, &mut y[..*n], 1);
            } else {
                let (w, s, n, k) = &q[i - bf.len()];
                let w = WeightMatrix::with_scales(w, s, *n, *k).with_residency(Residency::Streamed);
                gemv(&x[..*k], &w, None, &mut y[..*n], 1);
            }
            g.push(BYTES as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
    }
    for (i, mut g) in gbps.into_iter().enumerate() {
        g.sort_by(f64::total_cmp);
        println!(
            "row bytes {:5} {:4}: {:5.1} GB/s [{:.1}–{:.1}]",
            ROW_BYTES[i % ROW_BYTES.len()],
            if i < ROW_BYTES.len() { "bf16" } else { "int8" },
            g[g.len() / 2],
            g[0],
            g[g.len() - 1]
        );
    }
}

/// Voxtral Mini 4B Realtime's decoder: per layer wq, wk, wv, wo, w1, w3, w2 (n, k).
const LAYER: &[(usize, usize)] = &[
    (4096, 3072),
    (1024, 3072),
    (1024, 3072),
    (3072, 4096),
    (9216, 3072),
    (9216, 3072),
    (3072, 9216),
];
const LAYERS: usize = 26;
const HEAD: (usize, usize) = (131072, 3072);

/// One synthetic decoder step (GEMVs only, m = 1) over all matrices, against the floor.
fn bench_step(int8: bool) {
    use voxide_nn::kernels::machine::{machine, plan_residency, CycleRead};
    let mut shapes: Vec<(usize, usize)> = (0..LAYERS).flat_map(|_| LAYER.iter().copied()).collect();
    shapes.push(HEAD);
    enum M {
        B(Vec<bf16>),
        Q(Vec<i8>, Vec<f32>),
    }
    let t = Instant::now();
    let mats: Vec<(M, usize, usize)> = shapes
        .iter()
        .map(|&(n, k)| {
            let m = if int8 {
                let (q, s) = quantize_int8(n, k, value);
                M::Q(q, s)
            } else {
                M::B(filled(n * k, bf16::from_f32))
            };
            (m, n, k)
        })
        .collect();
    let bytes: usize = mats
        .iter()
        .map(|(m, n, k)| match m {
            M::B(_) => n * k * 2,
            M::Q(..) => n * k + n * 4,
        })
        .sum();
    eprintln!("(weights built in {:.1} s)", t.elapsed().as_secs_f64());
    if let Some(r) = streaming_reads() {
        eprintln!(
            "(streamed matrices read with {} prefetches: from memory non-temporal {:.1} GB/s, plain {:.1} GB/s)",
            if r.nontemporal_pays() { "non-temporal" } else { "plain" },
            r.nontemporal_gbps,
            r.keep_gbps
        );
        let ahead = if int8 {
            voxide_nn::kernels::gemv::streamed_read_ahead::<i8>()
        } else {
            voxide_nn::kernels::gemv::streamed_read_ahead::<bf16>()
        };
        eprintln!(
            "(prefetched {} bytes ahead: {:?})",
            ahead.bytes, ahead.measured
        );
    }
    let xs: Vec<Vec<f32>> = mats
        .iter()
        .map(|(_, _, k)| (0..*k).map(value).collect())
        .collect();
    let mut ys: Vec<Vec<f32>> = mats.iter().map(|(_, n, _)| vec![0f32; *n]).collect();
    // The residency a model's plan gives each matrix of the step (`Linear::plan_residency`).
    let reads: Vec<CycleRead> = mats
        .iter()
        .map(|(m, n, k)| {
            CycleRead::once(match m {
                M::B(_) => n * k * 2,
                M::Q(..) => n * k + n * 4,
            })
        })
        .collect();
    let plan = plan_residency(&reads, 0, machine().cache_budget());
    let one = |i: usize, y: &mut [f32], res: Option<Residency>| {
        let (m, n, k) = &mats[i];
        let r = res.unwrap_or(plan[i]);
        match m {
            M::B(w) => gemv(
                &xs[i],
                &WeightMatrix::new(w, *n, *k).with_residency(r),
                None,
                y,
                1,
            ),
            M::Q(q, s) => {
                let w = WeightMatrix::with_scales(q, s, *n, *k);
                gemv(&xs[i], &w.with_residency(r), None, y, 1)
            }
        }
    };
    let step = |ys: &mut Vec<Vec<f32>>, res: Option<Residency>| {
        for (i, y) in ys.iter_mut().enumerate() {
            one(i, y, res);
        }
    };
    // Where the time goes: each kind of matrix timed inside whole steps.
    let mut per = vec![0f64; LAYER.len() + 1];
    for _ in 0..3 {
        for (i, y) in ys.iter_mut().enumerate() {
            let t = Instant::now();
            one(i, y, None);
            per[if i == mats.len() - 1 {
                LAYER.len()
            } else {
                i % LAYER.len()
            }] += t.elapsed().as_secs_f64();
        }
    }
    for (j, t) in per.iter().enumerate() {
        let (n, k) = if j == LAYER.len() { HEAD } else { LAYER[j] };
        let count = if j == LAYER.len() { 3 } else { 3 * LAYERS };
        let b = if int8 { n * k + 4 * n } else { 2 * n * k } * count;
        println!(
            "  in-step {n:6}x{k:<5} {:8.3} ms per step {:6.1} GB/s",
            t / 3.0 * 1e3,
            b as f64 / t / 1e9
        );
    }
    // Steps alternate with bandwidth passes: the floor moves with the neighbours' load. Each
    // round also times the step with every matrix streamed and with every matrix cached.
    let probe = ReadProbe::for_machine(rayon::current_num_threads());
    let variants = [
        (", as planned", None),
        (", all streamed", Some(Residency::Streamed)),
        (", all cached", Some(Residency::Cached)),
    ];
    step(&mut ys, None);
    let mut steps = vec![vec![]; variants.len()];
    let mut gbps = vec![];
    for _ in 0..9 {
        gbps.push(probe.pass_gbps(probe.best()));
        for ((_, res), times) in variants.iter().zip(&mut steps) {
            let t = Instant::now();
            step(&mut ys, *res);
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    // The floor divides by the fastest pass seen (as `voxide bench` does): a step that reads
    // faster than that is a measurement error, not a figure.
    let g = med(&mut gbps);
    let floor = bytes as f64 / (g.2 * 1e9);
    for ((name, _), times) in variants.iter().zip(&mut steps) {
        let tm = med(times);
        report(
            &format!(
                "decoder step {} ({:.3} GB){name}",
                if int8 { "int8" } else { "bf16" },
                bytes as f64 / 1e9
            ),
            bytes,
            tm,
        );
        println!(
            "{:44} bandwidth {:.1} GB/s (fastest of 9 passes; median {:.1}, slowest {:.1}) → floor {:.1} ms; step / floor {:.3} [{:.3}–{:.3}]{}",
            "",
            g.2,
            g.0,
            g.1,
            floor * 1e3,
            tm.0 / floor,
            tm.1 / floor,
            tm.2 / floor,
            if tm.1 < floor {
                ": a step beat the floor, a measurement error"
            } else {
                ""
            }
        );
    }
}

/// The block-quantized GEMV (m = 1) at Whisper base shapes (attention, MLP, the 51865-token
/// head) and a 4096×14336 MLP matrix, in GB/s of weight bytes read. As in `gemv`, the timed
/// calls rotate over copies that together exceed the L3, so weights come from DRAM; the read
/// bandwidth and the f16 / bf16 / int8 GEMV on the big matrix alongside.
/// A Qwen3-TTS 0.6B frame's int8 GEMVs: a talker step (28 layers of q/k/v, o, gate/up, down
/// stacked as the model runs them, and the 3072-row codec head), then 15 code predictor steps
/// (5 layers of the same shapes, and one 2048-row head per step), read as the machine's plan
/// for the frame says (the predictor's stack read 15 times, the rest once), as the plan that
/// counts every matrix once would, and all streamed.
fn bench_tts_frame() {
    use voxide_nn::kernels::machine::{machine, plan_residency, CycleRead};
    const LAYER: [(usize, usize); 4] = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072)];
    const GROUPS: usize = 15;
    let mut shapes = vec![(3072, 1024)];
    shapes.extend((0..28).flat_map(|_| LAYER));
    let predictor = shapes.len()..shapes.len() + 5 * LAYER.len();
    shapes.extend((0..5).flat_map(|_| LAYER));
    let heads = shapes.len();
    shapes.extend([(2048, 1024); GROUPS]);
    let mats: Vec<(Vec<i8>, Vec<f32>)> = shapes
        .iter()
        .map(|&(n, k)| quantize_int8(n, k, value))
        .collect();
    let bytes = |i: usize| shapes[i].0 * shapes[i].1 + 4 * shapes[i].0;
    let reads = |i: usize| if predictor.contains(&i) { GROUPS } else { 1 };
    let frame_bytes: usize = (0..shapes.len()).map(|i| bytes(i) * reads(i)).sum();
    let budget = machine().cache_budget();
    let cycle: Vec<CycleRead> = (0..shapes.len())
        .map(|i| CycleRead {
            bytes: bytes(i),
            reads: reads(i),
        })
        .collect();
    let once: Vec<CycleRead> = (0..shapes.len())
        .map(|i| CycleRead::once(bytes(i)))
        .collect();
    let x: Vec<f32> = (0..3072).map(value).collect();
    let mut y = vec![0f32; 6144];
    let mut one = |i: usize, r: Residency| {
        let (n, k) = shapes[i];
        let (q, s) = &mats[i];
        let w = WeightMatrix::with_scales(q, s, n, k).with_residency(r);
        gemv(&x[..k], &w, None, &mut y[..n], 1);
    };
    println!(
        "tts-frame: {:.1} MB per frame, cache budget {} MB",
        frame_bytes as f64 / 1e6,
        budget >> 20
    );
    for (name, plan) in [
        ("planned per cycle", plan_residency(&cycle, 0, budget)),
        ("planned once each", plan_residency(&once, 0, budget)),
        ("all streamed", vec![Residency::Streamed; shapes.len()]),
    ] {
        let cached: usize = (0..shapes.len())
            .filter(|&i| plan[i] == Residency::Cached)
            .map(bytes)
            .sum();
        let stats = time(2, 12, || {
            for (i, &r) in plan[..predictor.start].iter().enumerate() {
                one(i, r);
            }
            for g in 0..GROUPS {
                for i in predictor.clone() {
                    one(i, plan[i]);
                }
                one(heads + g, plan[heads + g]);
            }
        });
        report(
            &format!("  {name} ({:.1} MB cached)", cached as f64 / 1e6),
            frame_bytes,
            stats,
        );
    }
}

fn bench_quant(types: &[GgmlType]) {
    let probe = ReadProbe::for_machine(rayon::current_num_threads());
    println!(
        "read bandwidth ({}), median of 5: {:.1} GB/s",
        probe.best(),
        probe.median_gbps(5)
    );
    for &(name, n, k) in &[
        ("512x512", 512, 512),
        ("2048x512", 2048, 512),
        ("51865x512", 51865, 512),
        ("4096x14336", 4096, 14336),
    ] {
        let w: Vec<f32> = filled(n * k, |v| v);
        let x: Vec<f32> = (0..k).map(value).collect();
        let mut y = vec![0f32; n];
        for &ty in types {
            let rb = ty.row_bytes(k).expect("whole blocks");
            let mut q = vec![0u8; n * rb];
            q.par_chunks_mut(rb)
                .zip(w.par_chunks(k))
                .for_each(|(dst, src)| quantize_row(ty, src, dst));
            let bytes = q.len();
            let copies = ((256 << 20) / bytes).max(1);
            let qs: Vec<Vec<u8>> = (0..copies).map(|_| q.clone()).collect();
            let mut c = 0;
            report(
                &format!("quant m=1 {:5} {name}", ty.name()),
                bytes,
                time(copies.max(3), reps_for(bytes).max(copies), || {
                    let w = QuantMatrix::new(&qs[c % copies], ty, n, k).expect("sizes");
                    quant_gemv(&x, &w, None, &mut y, 1);
                    c += 1;
                }),
            );
        }
    }
    bench_gemv(None, &[("4096x14336", 4096, 14336)]);
    println!(
        "read bandwidth ({}), median of 5: {:.1} GB/s",
        probe.best(),
        probe.median_gbps(5)
    );
}

/// The block-quantized GEMM at Whisper encoder shapes (m = 1500: one window; tiny, base,
/// small and large-v3 widths): the integer GEMM on repacked weights (types it has on this
/// CPU) against dequantized blocks + f32 GEMM, in GFLOP/s (medians).
fn bench_quant_encoder(types: &[GgmlType]) {
    // Whisper's encoder matrices (n × k) at base, small and large-v3, 1500 rows of x.
    for &(n, k) in &[
        (384usize, 384usize),
        (1536, 384),
        (512, 512),
        (2048, 512),
        (768, 768),
        (3072, 768),
        (768, 3072),
        (1280, 1280),
        (5120, 1280),
        (1280, 5120),
    ] {
        let m = 1500;
        let w: Vec<f32> = filled(n * k, |v| v);
        let x: Vec<f32> = (0..m * k).map(value).collect();
        let mut y = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let reps = (2e10 / flops).clamp(5.0, 50.0) as usize;
        let gflops = |t: (f64, f64, f64)| flops / t.0 / 1e9;
        for &ty in types {
            let rb = ty.row_bytes(k).expect("whole blocks");
            let mut q = vec![0u8; n * rb];
            q.par_chunks_mut(rb)
                .zip(w.par_chunks(k))
                .for_each(|(dst, src)| quantize_row(ty, src, dst));
            let qm = QuantMatrix::new(&q, ty, n, k).expect("sizes");
            let wide = time(2, reps, || matmul_widened(&x, &qm, None, &mut y, m));
            let line = format!(
                "quant {:5} {n:5}x{k:<5} m={m}: widened f32 {:7.2} ms ({:5.1} GFLOP/s)",
                ty.name(),
                wide.0 * 1e3,
                gflops(wide)
            );
            if has_gemm_kernel(ty) {
                let int = time(2, reps, || quant_gemm(&x, &qm, None, &mut y, m));
                println!(
                    "{line}, integer GEMM {:7.2} ms ({:5.1} GFLOP/s, {:.2}x)",
                    int.0 * 1e3,
                    gflops(int),
                    wide.0 / int.0
                );
            } else {
                println!("{line}");
            }
        }
    }
}

/// The block-quantized GEMV's arithmetic throughput: one thread, a 256×1024 matrix that
/// stays in L2, per type, instruction set and row count of x (GB/s of weights per call).
fn bench_quant_l2(types: &[GgmlType]) {
    let (n, k) = (256, 1024);
    let w: Vec<f32> = filled(n * k, |v| v);
    let x: Vec<f32> = (0..8 * k).map(value).collect();
    let mut y = vec![0f32; 8 * n];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    for &ty in types {
        let rb = ty.row_bytes(k).expect("whole blocks");
        let mut q = vec![0u8; n * rb];
        q.chunks_mut(rb)
            .zip(w.chunks(k))
            .for_each(|(dst, src)| quantize_row(ty, src, dst));
        let qm = QuantMatrix::new(&q, ty, n, k).expect("sizes");
        for isa in Isa::available() {
            for m in [1, 2, 4, 5, 8] {
                let (x, y) = (&x[..m * k], &mut y[..m * n]);
                report(
                    &format!("quant l2 1 thread {:5} {isa:?} m={m}", ty.name()),
                    q.len(),
                    pool.install(|| time(20, 500, || quant_gemv_on(isa, x, &qm, None, y, m))),
                );
            }
        }
    }
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // Type names select the types of `quant` (default: the ones with an integer path).
    let mut types: Vec<GgmlType> = args.iter().filter_map(|a| GgmlType::from_name(a)).collect();
    let args: Vec<&String> = args
        .iter()
        .filter(|a| GgmlType::from_name(a).is_none())
        .collect();
    if types.is_empty() {
        use GgmlType::*;
        types = vec![Q8_0, Q6K, Q5_1, Q5_0, Q5K, Q4_1, Q4_0, Q4K];
    }
    let on = |s: &str| args.is_empty() || args.iter().any(|a| *a == s);
    let threads = rayon::current_num_threads();
    println!("threads: {threads}, isa: {:?}", Isa::detect());
    if on("bandwidth") {
        // Every variant of the probe, then the best one again.
        let probe = ReadProbe::for_machine(threads);
        println!(
            "read bandwidth, {threads} threads, {} MB buffers, median of 3 per variant:",
            probe.bytes() / 2 / 1_000_000
        );
        for (v, gbps) in probe.variants() {
            println!("  {gbps:6.1} GB/s  {v}");
        }
        println!(
            "best ({}), median of 7: {:.1} GB/s",
            probe.best(),
            probe.median_gbps(7)
        );
    }
    if on("fma") {
        for t in [1, threads] {
            let gflops = voxide_nn::kernels::fma_peak::measure_fma_gflops(t, 5);
            println!("f32 FMA peak, {t} threads: {gflops:.1} GFLOP/s");
        }
        if let Some(d) = voxide_nn::kernels::fma_peak::Bf16Dots::measure() {
            println!(
                "bf16 dot products, 1 thread: {:.1} GFLOP/s against f32 FMAs' {:.1} ({:.2}x, taken: {})",
                d.bf16_gflops,
                d.f32_gflops,
                d.bf16_gflops / d.f32_gflops,
                d.pay()
            );
        }
    }
    if on("gemv") {
        bench_gemv(None, SHAPES);
    }
    if on("isa") {
        for isa in Isa::available() {
            bench_gemv(Some(isa), &SHAPES[1..2]);
        }
        let (n, k, m) = (9216, 3072, 39);
        let f = Formats::new(n, k);
        let x: Vec<f32> = (0..m * k).map(value).collect();
        let mut y = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        for isa in Isa::available() {
            let wb = WeightMatrix::new(&f.bf16, n, k);
            let reps = if isa == Isa::Scalar { 2 } else { 10 };
            let t = time(1, reps, || matmul_small_on(isa, &x, &wb, None, &mut y, m));
            println!(
                "small-M m={m} bf16 {isa:?} 9216x3072: {:.3} ms, {:.1} GFLOP/s",
                t.0 * 1e3,
                flops / t.0 / 1e9
            );
        }
    }
    if on("l2") {
        // Cache-resident: the kernels' arithmetic throughput.
        for isa in Isa::available() {
            bench_gemv(
                Some(isa),
                &[("l2 256x1024", 256, 1024), ("l2 128x3072", 128, 3072)],
            );
        }
    }
    if on("candle") {
        bench_candle()?;
    }
    if on("small") {
        bench_small(&[39])?;
    }
    if on("crossover") {
        bench_small(&[9, 16, 64, 65, 128, 256, 512])?;
    }
    if on("whisper") {
        bench_whisper()?;
    }
    if on("voxtral-encoder") {
        bench_voxtral_encoder()?;
    }
    if on("voxtral-prefill") {
        bench_voxtral_prefill()?;
    }
    if on("attention-shapes") {
        bench_attention_shapes()?;
    }
    if on("whisper-step") {
        bench_whisper_step();
    }
    if on("row-bytes") {
        bench_row_bytes();
    }
    if on("int8-prompt") {
        bench_int8_prompt();
    }
    if on("int8-chunks") {
        bench_int8_chunks();
    }
    if on("rows") {
        bench_rows();
    }
    if on("attention") {
        bench_attention()?;
    }
    if on("step") {
        bench_step(false);
    }
    if on("step-int8") {
        bench_step(true);
    }
    if on("tts-frame") {
        bench_tts_frame();
    }
    if on("quant") {
        bench_quant(&types);
    }
    if on("quant-encoder") {
        bench_quant_encoder(&types);
    }
    if on("thin") {
        bench_thin();
    }
    if on("winograd") {
        bench_winograd();
    }
    if on("codec-convs") {
        bench_codec_convs()?;
    }
    if on("quant-l2") {
        bench_quant_l2(&types);
    }
    Ok(())
}

/// A decoder step's attention over its caches: every layer's K/V (views into caches of 2048
/// positions, as the KV cache hands them out), one call per layer, in GB/s of K/V read.
/// Bytes read between layers to flush the caches (larger than any L3 seen here, 480 MB).
const FLUSH_BYTES: usize = 1 << 30;

fn bench_attention() -> candle_core::Result<()> {
    // (name, layers, kv heads, query rows per kv head, head dim, positions, K/V dtype)
    let cases = [
        (
            "voxtral-3b  30 L, 475 pos, f32",
            30,
            8,
            4,
            128,
            475,
            DType::F32,
        ),
        (
            "voxtral-3b  30 L, 475 pos, f16",
            30,
            8,
            4,
            128,
            475,
            DType::F16,
        ),
        (
            "realtime    26 L, 140 pos, f32",
            26,
            8,
            4,
            128,
            140,
            DType::F32,
        ),
        (
            "realtime    26 L, 140 pos, f16",
            26,
            8,
            4,
            128,
            140,
            DType::F16,
        ),
        (
            "qwen3-tts talker 28 L, 150 pos, f16",
            28,
            8,
            2,
            128,
            150,
            DType::F16,
        ),
        (
            "whisper-tiny cross 4 L, 1500, f16",
            4,
            6,
            1,
            64,
            1500,
            DType::F16,
        ),
        (
            "whisper-base cross 6 L, 1500, f16",
            6,
            8,
            1,
            64,
            1500,
            DType::F16,
        ),
        (
            "whisper-turbo cross 4 L, 1500, f16",
            4,
            20,
            1,
            64,
            1500,
            DType::F16,
        ),
    ];
    let flush: Vec<f32> = (0..FLUSH_BYTES / 4).map(|i| i as f32).collect();
    for (name, layers, heads, rows, d, s, dtype) in cases {
        let dev = Device::Cpu;
        let cap = 2048.max(s);
        let caches: Vec<(Tensor, Tensor)> = (0..layers)
            .map(|l| {
                let kv = |o: usize| -> candle_core::Result<Tensor> {
                    let data: Vec<f32> = (0..heads * cap * d).map(|i| value(i + o)).collect();
                    Tensor::from_vec(data, (1, heads, cap, d), &dev)?
                        .to_dtype(dtype)?
                        .narrow(2, 0, s)
                };
                Ok((kv(2 * l)?, kv(2 * l + 1)?))
            })
            .collect::<candle_core::Result<_>>()?;
        let q = Tensor::from_vec(
            (0..heads * rows * d)
                .map(|i| value(i) * 0.1)
                .collect::<Vec<f32>>(),
            (1, heads, rows, d),
            &dev,
        )?;
        let bytes = layers * 2 * heads * s * d * dtype.size_in_bytes();
        let t = time(2, 15, || {
            for (k, v) in &caches {
                q.apply_op3_no_bwd(k, v, &DecodeAttention)
                    .expect("attention");
            }
        });
        report(&format!("attention {name}"), bytes, t);
        // As in a decoder step, whose streamed weights push the K/V out of the caches between
        // one layer's attention and the next step's: a pass over a buffer larger than the L3
        // before each layer, only the attention timed.
        let mut times: Vec<f64> = (0..15)
            .map(|_| {
                let mut t = 0.0;
                for (k, v) in &caches {
                    std::hint::black_box(flush.par_chunks(1 << 16).map(line_sum).sum::<f32>());
                    // The flush runs on rayon for ms, long enough for the pool's helpers to
                    // park; in a step they spin between loops. An empty loop wakes them
                    // (untimed), so the figure is the walk's, not a wake-up's.
                    for_each_task(2, &|_| {});
                    let start = Instant::now();
                    q.apply_op3_no_bwd(k, v, &DecodeAttention)
                        .expect("attention");
                    t += start.elapsed().as_secs_f64();
                }
                t
            })
            .collect();
        times.sort_by(f64::total_cmp);
        report(
            &format!("attention {name}, K/V from memory"),
            bytes,
            (times[7], times[0], times[14]),
        );
    }
    Ok(())
}

/// One value of each 64-byte line of `c` (a pass that brings every line in).
fn line_sum(c: &[f32]) -> f32 {
    c.iter().step_by(16).sum()
}

/// The Qwen3-TTS 0.6B codec decoder's k7 convolutions (C = O channels, dilations 1, 3, 9) as a
/// chunk of 16 frames and of 1 frame feeds them, in GFLOP/s counted as Winograd's products
/// (10 per 4 outputs).
fn bench_winograd() {
    use voxide_nn::kernels::winograd::WinogradConv;
    for (c, frames_16, frame_1) in [
        (768, 512, 32),
        (384, 2560, 160),
        (192, 10240, 640),
        (96, 30720, 1920),
    ] {
        let taps: Vec<f32> = (0..7 * c * c).map(|i| value(i) * 0.02).collect();
        for t in [frames_16, frame_1] {
            for d in [1, 3, 9] {
                let conv =
                    WinogradConv::new(&taps, &vec![0.1; c], c, c, 7, d).expect("k7 is Winograd");
                let len = t + 6 * d;
                let x: Vec<f32> = (0..c * len).map(|i| value(i + 5)).collect();
                let mut y = vec![0f32; c * t];
                let (med, min, max) = time(2, 15, || conv.forward(&x, len, &mut y));
                let flop = 2.0 * (c * c) as f64 * 2.5 * t as f64;
                println!(
                    "winograd k7 {c:3} channels x {t:5} d {d}: {:8.3} ms [{:.3}–{:.3}] {:6.1} GFLOP/s",
                    med * 1e3,
                    min * 1e3,
                    max * 1e3,
                    flop / med / 1e9
                );
            }
        }
    }
}

/// The Qwen3-TTS codec's other convolutions at a 16-frame and a 1-frame chunk: its transposed
/// (upsampling) ones, streamed, and its residual units' SnakeBeta + 1×1 + residual.
fn bench_codec_convs() -> candle_core::Result<()> {
    use std::collections::HashMap;
    use voxide_nn::activation::SnakeBeta;
    use voxide_nn::conv::CausalConvTranspose1d;
    use voxide_nn::{Conv1d, Conv1dSpec};
    let dev = Device::Cpu;
    let tensor = |n: usize, shape: &[usize], scale: f32| {
        Tensor::from_vec(filled(n, |v| v * scale), shape, &dev)
    };
    // Weights as the checkpoints store them: bf16 values (the tiles' products take them in
    // one part, see `kernels::amx_f32`).
    let weights = |n: usize, shape: &[usize]| {
        Tensor::from_vec(
            filled(n, |v| half::bf16::from_f32(v * 0.02).to_f32()),
            shape,
            &dev,
        )
    };
    // (in, out, kernel, stride, input frames of a 16-frame chunk, of a 1-frame chunk)
    for (cin, cout, kernel, stride, frames_16, frame_1) in [
        (1024, 1024, 2, 2, 32, 2),
        (1536, 768, 16, 8, 64, 4),
        (768, 384, 10, 5, 512, 32),
        (384, 192, 8, 4, 2560, 160),
        (192, 96, 6, 3, 10240, 640),
    ] {
        let mut ts = HashMap::new();
        ts.insert(
            "weight".to_string(),
            weights(cin * cout * kernel, &[cin, cout, kernel])?,
        );
        ts.insert("bias".to_string(), tensor(cout, &[cout], 0.1)?);
        let vb = candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev);
        let conv = CausalConvTranspose1d::load(vb, cin, cout, kernel, stride)?;
        for t in [frames_16, frame_1] {
            let x = tensor(cin * t, &[1, cin, t], 1.0)?;
            let mut tail = None;
            let (med, min, max) = time(2, 15, || {
                conv.push(&mut tail, &x).expect("transposed convolution");
            });
            let flop = 2.0 * (cin * cout * kernel * t) as f64;
            println!(
                "transposed {cin:4} -> {cout:4} k{kernel:2} s{stride} x {t:5}: {:8.3} ms [{:.3}–{:.3}] {:6.1} GFLOP/s",
                med * 1e3,
                min * 1e3,
                max * 1e3,
                flop / med / 1e9
            );
        }
    }
    for (c, frames_16, frame_1) in [
        (768, 512, 32),
        (384, 2560, 160),
        (192, 10240, 640),
        (96, 30720, 1920),
    ] {
        let mut ts = HashMap::new();
        ts.insert("weight".to_string(), weights(c * c, &[c, c, 1])?);
        ts.insert("bias".to_string(), tensor(c, &[c], 0.1)?);
        let conv = Conv1d::load(
            candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev),
            Conv1dSpec::new(c, c, 1),
        )?;
        let mut params = HashMap::new();
        params.insert("alpha".to_string(), tensor(c, &[c], 0.5)?);
        params.insert("beta".to_string(), tensor(c, &[c], 0.5)?);
        let act = SnakeBeta::load(
            candle_nn::VarBuilder::from_tensors(params, DType::F32, &dev),
            c,
        )?;
        for t in [frames_16, frame_1] {
            let x = tensor(c * t, &[1, c, t], 1.0)?;
            let residual = tensor(c * t, &[1, c, t], 1.0)?;
            let (med, min, max) = time(2, 15, || {
                conv.forward_snake_residual(&act, &x, &residual)
                    .expect("1x1 convolution");
            });
            let flop = 2.0 * (c * c * t) as f64;
            println!(
                "snake 1x1 residual {c:4} x {t:5}: {:8.3} ms [{:.3}–{:.3}] {:6.1} GFLOP/s",
                med * 1e3,
                min * 1e3,
                max * 1e3,
                flop / med / 1e9
            );
        }
    }
    Ok(())
}

/// Thin f32 products (a streaming codec's short chunks: a few columns), weights from memory
/// (cycling through 100 MB of matrices): the `gemm` crate as it is, on columns padded to 16,
/// and the GEMV (≤ 8 columns), as `kernels::gemm_f32` chooses between them.
fn bench_thin() {
    for (o, c) in [(768usize, 768usize), (1536, 1024)] {
        let mats = 100_000_000 / (o * c * 4);
        let w: Vec<f32> = (0..o * c * mats).map(|i| value(i) * 0.01).collect();
        let mut next = 0;
        let mut matrix = || {
            next = (next + 1) % mats;
            &w[next * o * c..(next + 1) * o * c]
        };
        for n in [1usize, 2, 4, 8, 9, 12, 16, 24, 32, 40] {
            let gemm = |w: &[f32], n: usize| {
                let x: Vec<f32> = (0..c * n).map(|i| value(i + 3)).collect();
                let mut y = vec![0f32; o * n];
                // SAFETY: w is o × c, x is c × n and y o × n, all row-major.
                unsafe {
                    gemm::gemm(
                        o,
                        n,
                        c,
                        y.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        w.as_ptr(),
                        1,
                        c as isize,
                        x.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(rayon::current_num_threads()),
                    );
                }
            };
            let plain = time(2, 48, || gemm(matrix(), n));
            let padded = time(2, 48, || gemm(matrix(), n.next_multiple_of(16)));
            let x: Vec<f32> = (0..n * c).map(|i| value(i + 3)).collect();
            let mut y = vec![0f32; n * o];
            let line = format!(
                "thin {o}x{c} f32 by {n:2}: gemm {:.3} ms, padded to {:2} {:.3} ms",
                plain.0 * 1e3,
                n.next_multiple_of(16),
                padded.0 * 1e3
            );
            if n <= 8 {
                let t = time(2, 48, || {
                    gemv(&x, &WeightMatrix::new(matrix(), o, c), None, &mut y, n)
                });
                println!("{line}, GEMV {:.3} ms", t.0 * 1e3);
            } else {
                println!("{line}");
            }
        }
    }
}

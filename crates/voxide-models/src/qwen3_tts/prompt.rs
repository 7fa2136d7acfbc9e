//! The talker's dual-track prompt, exactly as qwen-tts `Qwen3TTSForConditionalGeneration.
//! generate` builds it (specs/qwen3-tts.md §6). "a ⊕ b" is text-track embedding plus
//! codec-track embedding:
//!
//! ```text
//! [instruction]                       text only (`<|im_start|>user\n…<|im_end|>\n`)
//! <|im_start|> assistant \n           text only
//! tts_pad ⊕ think | nothink           think when a language is given
//! tts_pad ⊕ think_bos
//! tts_pad ⊕ language                  omitted for auto
//! tts_pad ⊕ think_eos
//! tts_pad ⊕ speaker                   preset id or x-vector; omitted without one
//! tts_bos ⊕ codec_pad
//! text[0] ⊕ codec_bos                 streaming text; the rest of the text, then tts_eos,
//!                                     rides on the generated frames ("trailing text")
//! ```
//!
//! In non-streaming mode the whole text (⊕ codec_pad) and tts_eos (⊕ codec_pad) are in the
//! prompt, closed by tts_pad ⊕ codec_bos, and every frame gets tts_pad.
//!
//! Voice clone with a reference transcript (in-context learning, `generate_icl_prompt`)
//! replaces the last position by two tracks: text = reference text, target text, tts_eos;
//! codec = codec_bos, then the Σ16 code embeddings of each reference frame. Streaming zips them
//! position by position (surplus text trails on the frames, a shortage is padded with
//! tts_pad); non-streaming puts the text track (⊕ codec_pad) first, then the codec track
//! (⊕ tts_pad).

use super::config::{Config, Dialect};
use super::talker::Talker;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Whose voice speaks.
#[derive(Clone, Debug)]
pub enum Voice {
    /// No speaker slot (VoiceDesign: the instruction describes the voice).
    Unspecified,
    /// A preset speaker of `talker_config.spk_id` (CustomVoice), by name.
    Preset(String),
    /// A speaker embedding (1, 1, H) or (H,), e.g. the x-vector of a reference clip (Base).
    Embedding(Tensor),
}

/// One synthesis request at the token level.
#[derive(Clone, Debug)]
pub struct PromptRequest<'a> {
    /// `<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n`, tokenised.
    pub text_ids: &'a [u32],
    /// `<|im_start|>user\n{instruction}<|im_end|>\n`, tokenised.
    pub instruct_ids: Option<&'a [u32]>,
    /// A key of `codec_language_id` (any case), or `None` or "auto" for auto.
    pub language: Option<&'a str>,
    pub voice: Voice,
    /// Whole text in the prompt instead of streamed alongside the frames.
    pub non_streaming: bool,
    /// A reference clip's transcript and codes for in-context voice cloning.
    pub reference: Option<Reference<'a>>,
}

/// The in-context part of a voice-clone request.
#[derive(Clone, Copy, Debug)]
pub struct Reference<'a> {
    /// `<|im_start|>assistant\n{ref_text}<|im_end|>\n`, tokenised.
    pub text_ids: &'a [u32],
    /// The reference clip's frames of G codes (the codec encoder's output).
    pub codes: &'a [Vec<u32>],
}

/// The talker's prompt: prefill embeddings and what each generated frame adds.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// (1, P, H)
    pub prefill: Tensor,
    /// Text-track embeddings added to frames 0, 1, … (1, T, H); then `tts_pad`.
    pub trailing_text: Tensor,
    /// (1, 1, H)
    pub tts_pad: Tensor,
    /// The prefill's first positions, which depend on the voice (a speaker, or a cloned
    /// reference's x-vector and transcript), the language and the instruction but not on the
    /// text: what requests in one voice share.
    pub voice_positions: usize,
}

/// Tokens of the template around the text: `<|im_start|> assistant \n` before it,
/// `<|im_end|> \n <|im_start|> assistant \n` after it.
const ROLE_TOKENS: usize = 3;
const TAIL_TOKENS: usize = 5;
/// After a reference transcript: `<|im_end|> \n`.
const REFERENCE_TAIL_TOKENS: usize = 2;

impl Prompt {
    /// Builds the prompt of `request` for `talker` (ids and speakers checked against
    /// `config`).
    pub fn build(talker: &Talker, config: &Config, request: &PromptRequest<'_>) -> Result<Self> {
        let t = &config.talker_config;
        let ids = request.text_ids;
        if ids.len() <= ROLE_TOKENS + TAIL_TOKENS {
            return Err(Error::InvalidRequest(
                "nothing to say: the text is empty".into(),
            ));
        }
        let speaker = match &request.voice {
            Voice::Preset(name) => Some(talker.embed_codec(&[config.speaker_id(name)?])?),
            Voice::Embedding(e) => Some(e.reshape((1, 1, t.dims.hidden_size))?),
            Voice::Unspecified => None,
        };
        let language = language_id(config, request)?;
        let specials = talker.embed_text(&[
            config.tts_bos_token_id,
            config.tts_eos_token_id,
            config.tts_pad_token_id,
        ])?;
        let (tts_bos, tts_eos, tts_pad) = (
            specials.narrow(1, 0, 1)?,
            specials.narrow(1, 1, 1)?,
            specials.narrow(1, 2, 1)?,
        );
        let tags = match language {
            None => vec![
                t.codec_nothink_id,
                t.codec_think_bos_id,
                t.codec_think_eos_id,
            ],
            Some(lang) => vec![
                t.codec_think_id,
                t.codec_think_bos_id,
                lang,
                t.codec_think_eos_id,
            ],
        };
        let mut codec = vec![talker.embed_codec(&tags)?];
        if let Some(embedding) = speaker {
            codec.push(embedding);
        }
        codec.push(talker.embed_codec(&[t.codec_pad_id, t.codec_bos_id])?);
        let codec = Tensor::cat(&codec, 1)?;
        let n = codec.dim(1)?;

        // tts_pad × (n − 2), tts_bos over every codec position but the last (codec_bos).
        let text_track = Tensor::cat(&[tts_pad.repeat((1, n - 2, 1))?, tts_bos], 1)?;
        let mut parts = Vec::new();
        if let Some(instruct) = request.instruct_ids {
            parts.push(talker.embed_text(instruct)?);
        }
        parts.push(talker.embed_text(&ids[..ROLE_TOKENS])?);
        parts.push((text_track + codec.narrow(1, 0, n - 1)?)?);
        let mut voice_positions = parts
            .iter()
            .map(|p| p.dim(1))
            .sum::<candle_core::Result<usize>>()?;
        let codec_bos = codec.narrow(1, n - 1, 1)?;
        let text = &ids[ROLE_TOKENS..ids.len() - TAIL_TOKENS];
        let trailing_text = match &request.reference {
            Some(reference) => {
                let (part, trailing, reference_positions) = in_context(
                    talker,
                    reference,
                    text,
                    &codec_bos,
                    &tts_eos,
                    &tts_pad,
                    request.non_streaming,
                )?;
                parts.push(part);
                voice_positions += reference_positions;
                trailing
            }
            None if request.non_streaming => {
                let track = Tensor::cat(&[talker.embed_text(text)?, tts_eos], 1)?;
                let pads = vec![t.codec_pad_id; text.len() + 1];
                parts.push((track + talker.embed_codec(&pads)?)?);
                parts.push((&tts_pad + codec_bos)?);
                tts_pad.clone()
            }
            None => {
                parts.push((talker.embed_text(&text[..1])? + codec_bos)?);
                if text.len() > 1 {
                    Tensor::cat(&[talker.embed_text(&text[1..])?, tts_eos], 1)?
                } else {
                    tts_eos
                }
            }
        };
        Ok(Self {
            prefill: Tensor::cat(&parts, 1)?,
            trailing_text,
            tts_pad,
            voice_positions,
        })
    }
}

impl PromptRequest<'_> {
    /// Talker positions the prompt takes: the prefill and, streaming, the text that rides on
    /// the frames after it ([`Prompt::build`] makes the same), known before anything is
    /// embedded.
    pub fn positions(&self, config: &Config) -> Result<usize> {
        let tags = 3 + usize::from(language_id(config, self)?.is_some());
        let speaker = usize::from(!matches!(self.voice, Voice::Unspecified));
        // Every codec position but codec_bos, which shares the first position of the text.
        let head = self.instruct_ids.map_or(0, <[u32]>::len) + ROLE_TOKENS + tags + speaker + 1;
        let text = self
            .text_ids
            .len()
            .saturating_sub(ROLE_TOKENS + TAIL_TOKENS);
        let body = match &self.reference {
            Some(reference) => {
                // Reference transcript, text and tts_eos; codec_bos and the clip's frames.
                let text_track = reference
                    .text_ids
                    .len()
                    .saturating_sub(ROLE_TOKENS + REFERENCE_TAIL_TOKENS)
                    + text
                    + 1;
                let codec_track = 1 + reference.codes.len();
                if self.non_streaming {
                    text_track + codec_track
                } else {
                    text_track.max(codec_track)
                }
            }
            // The text and tts_eos over codec_pad, then tts_pad ⊕ codec_bos.
            None if self.non_streaming => text + 2,
            // text[0] ⊕ codec_bos, then the rest of the text and tts_eos on the frames.
            None => text + 1,
        };
        Ok(head + body)
    }
}

/// The language id of `request`'s codec prompt: the language asked for, or the dialect of its
/// preset speaker when that is Chinese or auto.
fn language_id(config: &Config, request: &PromptRequest<'_>) -> Result<Option<u32>> {
    let t = &config.talker_config;
    let mut language = config.language_id(request.language)?;
    if let Voice::Preset(name) = &request.voice {
        let chinese_or_auto = language.is_none()
            || request
                .language
                .is_some_and(|l| l.eq_ignore_ascii_case("chinese"));
        if let (true, Some(Dialect::Language(dialect))) =
            (chinese_or_auto, t.spk_is_dialect.get(&name.to_lowercase()))
        {
            language = Some(*t.codec_language_id.get(dialect).ok_or_else(|| {
                Error::InvalidRequest(format!("dialect {dialect:?} has no language id"))
            })?);
        }
    }
    Ok(language)
}

/// The in-context positions of a voice-clone prompt, the trailing text track, and how many
/// of those positions come before the text (the reference transcript's, which lead the text
/// track), as qwen-tts `generate_icl_prompt`.
fn in_context(
    talker: &Talker,
    reference: &Reference<'_>,
    text: &[u32],
    codec_bos: &Tensor,
    tts_eos: &Tensor,
    tts_pad: &Tensor,
    non_streaming: bool,
) -> Result<(Tensor, Tensor, usize)> {
    let ref_ids = reference.text_ids;
    if ref_ids.len() <= ROLE_TOKENS + REFERENCE_TAIL_TOKENS {
        return Err(Error::InvalidRequest(
            "the reference transcript is empty".into(),
        ));
    }
    if reference.codes.is_empty() {
        return Err(Error::InvalidRequest(
            "the reference clip gave no frames".into(),
        ));
    }
    let groups = talker.predictor().groups() + 1;
    if let Some(f) = reference.codes.iter().find(|f| f.len() != groups) {
        return Err(Error::InvalidRequest(format!(
            "a reference frame has {} codes, the model {groups}",
            f.len()
        )));
    }
    let ids: Vec<u32> = ref_ids[ROLE_TOKENS..ref_ids.len() - REFERENCE_TAIL_TOKENS]
        .iter()
        .chain(text)
        .copied()
        .collect();
    let text_track = Tensor::cat(&[talker.embed_text(&ids)?, tts_eos.clone()], 1)?;
    let codec_track = Tensor::cat(
        &[codec_bos.clone(), talker.embed_frames(reference.codes)?],
        1,
    )?;
    let (text_len, codec_len) = (text_track.dim(1)?, codec_track.dim(1)?);
    let reference_len = ids.len() - text.len();
    if non_streaming {
        let pads = talker.embed_codec(&vec![talker.config().codec_pad_id; text_len])?;
        let part = Tensor::cat(
            &[(text_track + pads)?, codec_track.broadcast_add(tts_pad)?],
            1,
        )?;
        return Ok((part, tts_pad.clone(), reference_len));
    }
    // Zipped position by position: the transcript's beside the clip's first frames.
    let shared = reference_len.min(codec_len);
    if text_len > codec_len {
        let part = (text_track.narrow(1, 0, codec_len)? + codec_track)?;
        let trailing = text_track.narrow(1, codec_len, text_len - codec_len)?;
        Ok((part, trailing, shared))
    } else {
        let padded = Tensor::cat(
            &[text_track, tts_pad.repeat((1, codec_len - text_len, 1))?],
            1,
        )?;
        Ok(((padded + codec_track)?, tts_pad.clone(), shared))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Qwen3Tts;
    use super::*;
    use candle_core::Device;
    use std::path::Path;

    /// `positions` counts what `build` makes: the prefill and, streaming, the text on the
    /// frames (a trailing tts_pad alone is no text), for every layout of the prompt; and the
    /// voice positions are exactly the prefill's rows that do not depend on the text.
    #[test]
    fn positions_are_the_built_prompts() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/qwen3-tts/tiny-random");
        let tts = Qwen3Tts::from_dir(&dir, &Device::Cpu, None).expect("fixture model");
        let (talker, config) = (tts.talker(), tts.config());
        let tokens = |n: usize| (0..n as u32).map(|i| 20 + i % 50).collect::<Vec<_>>();
        let instruct = tokens(6);
        let reference_text = tokens(5 + 4);
        let frame = vec![1u32; talker.predictor().groups() + 1];
        let hidden = config.talker_config.dims.hidden_size;
        let voices = [
            Voice::Unspecified,
            Voice::Preset("tester".into()),
            Voice::Preset("dylan".into()),
            Voice::Embedding(Tensor::zeros(hidden, candle_core::DType::F32, &Device::Cpu).unwrap()),
        ];
        for text_len in [9, 10, 30] {
            let text_ids = tokens(text_len);
            for (voice, language, instruct_ids, frames, non_streaming) in voices
                .iter()
                .flat_map(|v| [(v, None), (v, Some("english")), (v, Some("chinese"))])
                .flat_map(|(v, l)| [(v, l, None), (v, l, Some(&instruct[..]))])
                .flat_map(|(v, l, i)| [0, 3, 40].map(|f| (v, l, i, f)))
                .flat_map(|(v, l, i, f)| [false, true].map(|n| (v, l, i, f, n)))
            {
                let codes = vec![frame.clone(); frames];
                let request = PromptRequest {
                    text_ids: &text_ids,
                    instruct_ids,
                    language,
                    voice: voice.clone(),
                    non_streaming,
                    reference: (frames > 0).then_some(Reference {
                        text_ids: &reference_text,
                        codes: &codes,
                    }),
                };
                let prompt = Prompt::build(talker, config, &request).unwrap();
                let what = format!(
                    "{voice:?} {language:?} instruct {} frames {frames} non-streaming {non_streaming} text {text_len}",
                    instruct_ids.is_some()
                );
                // The voice positions are the same whatever the text; the next one is not.
                let mut other_ids = text_ids.clone();
                let text_part = ROLE_TOKENS..text_ids.len() - TAIL_TOKENS;
                other_ids[text_part].iter_mut().for_each(|id| *id += 1);
                let other = Prompt::build(
                    talker,
                    config,
                    &PromptRequest {
                        text_ids: &other_ids,
                        voice: voice.clone(),
                        ..request.clone()
                    },
                )
                .unwrap();
                let row_diff = |at: usize| {
                    (prompt.prefill.narrow(1, 0, at + 1).unwrap()
                        - other.prefill.narrow(1, 0, at + 1).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_keepdim(2)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                };
                let shared = prompt.voice_positions;
                let last = prompt.prefill.dim(1).unwrap() - 1;
                let diffs = row_diff(shared.min(last));
                assert!(shared > 0, "{what}");
                assert!(
                    diffs[..shared].iter().all(|&d| d == 0.0),
                    "{what}: {diffs:?}"
                );
                if shared <= last {
                    assert!(
                        diffs[shared] > 0.0,
                        "{what}: position {shared} is the text's"
                    );
                }
                let trailing = prompt.trailing_text.dim(1).unwrap();
                let pad_only = trailing == 1
                    && (&prompt.trailing_text - &prompt.tts_pad)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        == 0.0;
                let want = prompt.prefill.dim(1).unwrap() + if pad_only { 0 } else { trailing };
                assert_eq!(request.positions(config).unwrap(), want, "{what}");
            }
        }
    }
}

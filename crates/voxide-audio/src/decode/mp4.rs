//! The audio track's edit list of an MP4/M4A file: which decoded samples are the audio.
//!
//! An AAC encoder primes its first frame (1024 or 2112 samples of pre-roll) and pads the
//! last; the container's edit list (`moov/trak/edts/elst`) says which span of the decoded
//! samples is the audio, and ffmpeg and Apple's players keep only that span. symphonia 0.5's
//! MP4 reader does not apply it, so we read it here and trim after decoding.

/// The span of the decoded samples that is the audio, as the edit list states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Edit {
    /// Where the span starts, in the track's timescale (the encoder's priming).
    start: u64,
    /// Its length in the movie's timescale; 0: to the end.
    duration: u64,
    media_scale: u64,
    movie_scale: u64,
}

impl Edit {
    /// Samples of `sample_rate` to drop from the start, and to keep after them (`None`: to
    /// the end).
    fn in_samples(&self, sample_rate: u32) -> (usize, Option<usize>) {
        let rate = sample_rate as u128;
        let samples = |t: u64, scale: u64| {
            usize::try_from(t as u128 * rate / scale as u128).unwrap_or(usize::MAX)
        };
        let keep = (self.duration > 0).then(|| samples(self.duration, self.movie_scale));
        (samples(self.start, self.media_scale), keep)
    }

    /// Keeps the span of each channel of decoded audio at `sample_rate`; a span past the
    /// decoded samples keeps what there is.
    pub(super) fn trim(&self, channels: &mut [Vec<f32>], sample_rate: u32) {
        let (skip, keep) = self.in_samples(sample_rate);
        for c in channels {
            c.drain(..skip.min(c.len()));
            c.truncate(keep.unwrap_or(usize::MAX));
        }
    }
}

/// A box's payload: its type and its bytes after the header.
fn boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let size = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as u64;
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            1 => (16, u64::from_be_bytes(data.get(8..16)?.try_into().ok()?)),
            0 => (8, data.len() as u64),
            n => (8, n),
        };
        let size = usize::try_from(size).ok()?;
        if size < header || size > data.len() {
            return None;
        }
        let payload = &data[header..size];
        data = &data[size..];
        Some((kind, payload))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data).find(|(k, _)| k == kind).map(|(_, p)| p)
}

fn be_u32(d: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?) as u64)
}

fn be_u64(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// The timescale of an `mvhd` or `mdhd` payload (after version and flags: two times, then
/// the timescale; 64-bit times in version 1).
fn timescale(header: &[u8]) -> Option<u64> {
    let at = if *header.first()? == 1 { 20 } else { 12 };
    be_u32(header, at).filter(|&t| t > 0)
}

/// The edit of the first sound track of an MP4 file, where its edit list holds one span of
/// media (empty edits, which delay the start, are not applied); `None` where there is no
/// edit list or it is not of that form.
pub(super) fn audio_edit(file: &[u8]) -> Option<Edit> {
    let moov = child(file, b"moov")?;
    let movie_scale = timescale(child(moov, b"mvhd")?)?;
    let trak = boxes(moov).filter(|(k, _)| k == b"trak").find(|(_, t)| {
        child(t, b"mdia")
            .and_then(|m| child(m, b"hdlr"))
            .and_then(|h| h.get(8..12))
            == Some(b"soun")
    })?;
    let trak = trak.1;
    let media_scale = timescale(child(child(trak, b"mdia")?, b"mdhd")?)?;
    let elst = child(child(trak, b"edts")?, b"elst")?;
    let wide = *elst.first()? == 1;
    let count = be_u32(elst, 4)? as usize;
    let entry = if wide { 20 } else { 12 };
    let spans = (0..count).map(|i| {
        let at = 8 + i * entry;
        if wide {
            Some((be_u64(elst, at)?, be_u64(elst, at + 8)? as i64))
        } else {
            Some((
                be_u32(elst, at)?,
                be_u32(elst, at + 4)? as u32 as i32 as i64,
            ))
        }
    });
    let mut media = Vec::new();
    for span in spans {
        let (duration, start) = span?;
        if start >= 0 {
            media.push((duration, start as u64));
        }
    }
    // A duration of 0 in the last edit means "to the end" (ISO/IEC 14496-12, 8.6.6).
    let [(duration, start)] = media[..] else {
        return None;
    };
    Some(Edit {
        start,
        duration,
        media_scale,
        movie_scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }

    /// `mvhd` / `mdhd` of version 0 with `scale`.
    fn header(scale: u32) -> Vec<u8> {
        let mut h = vec![0; 12];
        h.extend_from_slice(&scale.to_be_bytes());
        h.extend_from_slice(&[0; 4]);
        h
    }

    fn track(handler: &[u8; 4], media_scale: u32, edits: &[(u32, i32)]) -> Vec<u8> {
        let mut hdlr = vec![0; 8];
        hdlr.extend_from_slice(handler);
        let mdia = [boxed(b"mdhd", &header(media_scale)), boxed(b"hdlr", &hdlr)].concat();
        let mut elst = vec![0, 0, 0, 0];
        elst.extend_from_slice(&(edits.len() as u32).to_be_bytes());
        for (duration, start) in edits {
            elst.extend_from_slice(&duration.to_be_bytes());
            elst.extend_from_slice(&start.to_be_bytes());
            elst.extend_from_slice(&[0, 1, 0, 0]);
        }
        let edts = boxed(b"elst", &elst);
        boxed(
            b"trak",
            &[boxed(b"edts", &edts), boxed(b"mdia", &mdia)].concat(),
        )
    }

    fn file(tracks: &[Vec<u8>], movie_scale: u32) -> Vec<u8> {
        let moov = [vec![boxed(b"mvhd", &header(movie_scale))], tracks.to_vec()].concat();
        [
            boxed(b"ftyp", b"M4A \0\0\0\0"),
            boxed(b"moov", &moov.concat()),
        ]
        .concat()
    }

    #[test]
    fn the_sound_tracks_edit_is_read_in_samples() {
        // ffmpeg's AAC: 1024 samples of priming, 66150 of audio, movie time in ms.
        let f = file(
            &[
                track(b"vide", 90000, &[(1500, 0)]),
                track(b"soun", 44100, &[(1500, 1024)]),
            ],
            1000,
        );
        let edit = audio_edit(&f).unwrap();
        assert_eq!(edit.in_samples(44100), (1024, Some(66150)));
        // Trimmed: the priming dropped, the padding cut off.
        let mut channels = vec![(0..68000).map(|i| i as f32).collect::<Vec<_>>(); 2];
        edit.trim(&mut channels, 44100);
        for c in &channels {
            assert_eq!((c.len(), c[0], c[66149]), (66150, 1024.0, 67173.0));
        }
        // Fewer samples decoded than the edit names: what there is.
        let mut short = vec![vec![0.0; 1500]];
        edit.trim(&mut short, 44100);
        assert_eq!(short[0].len(), 476);
        // An empty edit first (a delay) is not applied; the media span is.
        let f = file(&[track(b"soun", 48000, &[(10, -1), (48000, 2112)])], 48000);
        assert_eq!(
            audio_edit(&f).unwrap().in_samples(48000),
            (2112, Some(48000))
        );
        // A duration of 0: to the end.
        let f = file(&[track(b"soun", 44100, &[(0, 1024)])], 600);
        assert_eq!(audio_edit(&f).unwrap().in_samples(44100), (1024, None));
    }

    #[test]
    fn edit_lists_of_other_forms_and_broken_boxes_are_not_applied() {
        // Two media spans (a cut): not applied.
        let f = file(&[track(b"soun", 44100, &[(10, 0), (10, 5000)])], 44100);
        assert_eq!(audio_edit(&f), None);
        // No sound track.
        let f = file(&[track(b"vide", 44100, &[(10, 1024)])], 44100);
        assert_eq!(audio_edit(&f), None);
        // Truncated anywhere: no edit, no panic.
        let f = file(&[track(b"soun", 44100, &[(1500, 1024)])], 1000);
        for end in 0..f.len() {
            assert_eq!(audio_edit(&f[..end]), None, "cut at {end}");
        }
        // A box (mvhd) that claims more bytes than there are.
        let mut f = f.clone();
        assert_eq!(&f[28..32], b"mvhd");
        f[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(audio_edit(&f), None);
    }
}

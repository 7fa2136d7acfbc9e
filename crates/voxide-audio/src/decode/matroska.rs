//! Matroska/WebM files cut short: what symphonia needs to read them up to the cut.
//!
//! A Matroska segment starts with a SeekHead that points at its other top-level elements, the
//! Cues (the index) usually at the end of the file. symphonia's reader follows every pointer
//! when it opens the file and panics on one past the end, so a recording cut short (an upload
//! stopped at a size limit, a browser tab closed) was refused whole. Here a SeekHead that
//! points past the end is turned into a Void element of the same length: the reader then
//! takes the top-level elements in order (Info, Tracks, Clusters) and decodes up to the cut,
//! as the other containers do.

/// Element ids (with their length marker bits, as written).
const EBML: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const SEEK_HEAD: u32 = 0x114D_9B74;
const SEEK: u32 = 0x4DBB;
const SEEK_POSITION: u32 = 0x53AC;
const CLUSTER: u32 = 0x1F43_B675;
const VOID: u8 = 0xEC;

/// An element's header at `at`: its id, where its data starts, and the data's length
/// (`None`: unknown, to the end of its parent).
fn header(data: &[u8], at: usize) -> Option<(u32, usize, Option<usize>)> {
    let first = *data.get(at)?;
    let id_len = first.leading_zeros() as usize + 1;
    if id_len > 4 {
        return None;
    }
    let id = data
        .get(at..at + id_len)?
        .iter()
        .fold(0u32, |v, &b| v << 8 | b as u32);
    let size_at = at + id_len;
    let lead = *data.get(size_at)?;
    let size_len = lead.leading_zeros() as usize + 1;
    if size_len > 8 {
        return None;
    }
    let bytes = data.get(size_at..size_at + size_len)?;
    let value = bytes
        .iter()
        .skip(1)
        .fold((lead as u64) & (0xFF >> size_len), |v, &b| {
            v << 8 | b as u64
        });
    let unknown = value == (1u64 << (7 * size_len)) - 1;
    let size = if unknown {
        None
    } else {
        Some(usize::try_from(value).ok()?)
    };
    Some((id, size_at + size_len, size))
}

/// The children of the element whose data is `data[start..end]`: (id, header start, data
/// start, data end).
fn children(data: &[u8], start: usize, end: usize) -> Vec<(u32, usize, usize, usize)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let Some((id, body, size)) = header(data, at) else {
            break;
        };
        let stop = size.map_or(end, |s| body.saturating_add(s).min(end));
        out.push((id, at, body, stop));
        if size.is_none() {
            break;
        }
        at = stop;
    }
    out
}

fn unsigned(bytes: &[u8]) -> Option<usize> {
    (bytes.len() <= 8).then(|| bytes.iter().fold(0usize, |v, &b| v << 8 | b as usize))
}

/// Turns each SeekHead of the segment that points past the end of `data` into a Void
/// element of the same length (see the module's doc). A file that is not Matroska, or whose
/// pointers all land inside it, is left as it is.
pub(super) fn void_seek_heads_past_the_end(data: &mut [u8]) {
    let Some((EBML, body, Some(size))) = header(data, 0) else {
        return;
    };
    let Some((SEGMENT, segment, _)) = header(data, body + size) else {
        return;
    };
    let top = children(data, segment, data.len());
    for (id, at, body, end) in top {
        if id == CLUSTER {
            break;
        }
        if id != SEEK_HEAD {
            continue;
        }
        let past_the_end = children(data, body, end)
            .into_iter()
            .filter(|c| c.0 == SEEK)
            .flat_map(|(_, _, b, e)| children(data, b, e))
            .filter(|c| c.0 == SEEK_POSITION)
            .filter_map(|(_, _, b, e)| unsigned(&data[b..e]))
            .any(|position| segment.saturating_add(position) >= data.len());
        if past_the_end {
            // Same length: a one-byte id and a size field three bytes longer.
            let size_len = body - at - 4;
            let width = size_len + 3;
            if width > 8 {
                continue;
            }
            let size = (end - body) as u64 | 1u64 << (7 * width);
            data[at] = VOID;
            data[at + 1..body].copy_from_slice(&size.to_be_bytes()[8 - width..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(id: u32, payload: &[u8]) -> Vec<u8> {
        let id = id.to_be_bytes();
        let skip = id.iter().take_while(|&&b| b == 0).count();
        let mut e = id[skip..].to_vec();
        e.push(0x80 | payload.len() as u8);
        e.extend_from_slice(payload);
        e
    }

    /// EBML header, then a segment of unknown size holding a SeekHead that points at
    /// `position` (relative to the segment's data) and some Info bytes.
    fn file(position: u8) -> Vec<u8> {
        let seek = element(SEEK, &element(SEEK_POSITION, &[position]));
        let seek_head = element(SEEK_HEAD, &seek);
        let info = element(0x1549_A966, &[1, 2, 3]);
        let mut segment = vec![
            0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        segment.extend_from_slice(&seek_head);
        segment.extend_from_slice(&info);
        [element(EBML, &[0x42, 0x86, 0x81, 0x01]), segment].concat()
    }

    #[test]
    fn a_seek_head_past_the_end_becomes_void_of_the_same_length() {
        let mut f = file(200);
        let before = f.clone();
        void_seek_heads_past_the_end(&mut f);
        assert_eq!(f.len(), before.len());
        let at = before
            .windows(4)
            .position(|w| w == SEEK_HEAD.to_be_bytes())
            .unwrap();
        let (id, body, size) = header(&f, at).unwrap();
        assert_eq!(id, VOID as u32);
        // The void covers exactly the old SeekHead: the Info element follows it.
        let (_, old_body, old_size) = header(&before, at).unwrap();
        assert_eq!(body + size.unwrap(), old_body + old_size.unwrap());
        assert_eq!(
            f[body + size.unwrap()..],
            before[old_body + old_size.unwrap()..]
        );
    }

    #[test]
    fn pointers_inside_the_file_and_other_files_are_left_alone() {
        // 12: the Info element, right after the 12-byte SeekHead.
        let mut f = file(12);
        let before = f.clone();
        void_seek_heads_past_the_end(&mut f);
        assert_eq!(f, before);
        let mut not_matroska = b"RIFF\x24\0\0\0WAVEfmt ".to_vec();
        let copy = not_matroska.clone();
        void_seek_heads_past_the_end(&mut not_matroska);
        assert_eq!(not_matroska, copy);
        // Cut anywhere: no panic.
        let f = file(200);
        for end in 0..f.len() {
            void_seek_heads_past_the_end(&mut f[..end].to_vec());
        }
    }
}

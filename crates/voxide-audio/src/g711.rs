//! G.711 telephone audio (8 kHz, a byte per sample): μ-law and A-law to linear, as ITU-T
//! G.711 defines the expansion (the values of Sun's reference `g711.c`).

/// One μ-law byte as a 16-bit sample.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0f) as i16;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if u & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// One A-law byte as a 16-bit sample.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = (a >> 4) & 0x07;
    let mantissa = (a & 0x0f) as i16;
    let magnitude = match exponent {
        0 => (mantissa << 4) + 8,
        e => ((mantissa << 4) + 0x108) << (e - 1),
    };
    if a & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansions_match_the_reference_tables() {
        // Sun g711.c: ulaw2linear(0x00) = -32124, (0x7f) = 0, (0x80) = 32124, (0xff) = 0;
        // alaw2linear(0xd5) = 8, (0x55) = -8, (0xaa) = 32256, (0x2a) = -32256.
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        // Both are odd-symmetric and monotonic in their codes.
        for b in 0..=255u8 {
            assert_eq!(ulaw_to_linear(b), -ulaw_to_linear(b ^ 0x80));
            assert_eq!(alaw_to_linear(b), -alaw_to_linear(b ^ 0x80));
        }
    }
}

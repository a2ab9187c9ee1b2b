//! Following the HTTP/2 frames a connection reads, for the header deadline.

/// Follows the HTTP/2 frames a connection reads (the 24-byte preface, then
/// 9-byte frame headers and their payloads, skipped), to tell when a header
/// block is open: a HEADERS frame without END_HEADERS, until the
/// CONTINUATION frame that has it. No other frame may come meanwhile, so an
/// open block that never ends would hold the connection.
#[derive(Debug)]
pub(super) struct H2Frames {
    preface_left: u8,
    head: [u8; 9],
    head_len: u8,
    /// Payload bytes of the current frame still to skip.
    skip: u32,
    open: bool,
}

impl Default for H2Frames {
    fn default() -> Self {
        Self {
            preface_left: 24,
            head: [0; 9],
            head_len: 0,
            skip: 0,
            open: false,
        }
    }
}

impl H2Frames {
    const HEADERS: u8 = 0x1;
    const CONTINUATION: u8 = 0x9;
    const END_HEADERS: u8 = 0x4;

    /// Follows `data`; whether a header block is open after it.
    pub(super) fn feed(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = data.len().min(usize::from(self.preface_left));
                self.preface_left -= n as u8;
                data = &data[n..];
            } else if self.skip > 0 {
                let n = data.len().min(self.skip as usize);
                self.skip -= n as u32;
                data = &data[n..];
            } else {
                let at = usize::from(self.head_len);
                let n = data.len().min(9 - at);
                self.head[at..at + n].copy_from_slice(&data[..n]);
                self.head_len += n as u8;
                data = &data[n..];
                if self.head_len == 9 {
                    self.head_len = 0;
                    let h = self.head;
                    self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    let (kind, flags) = (h[3], h[4]);
                    let ends = flags & Self::END_HEADERS != 0;
                    match kind {
                        Self::HEADERS => self.open = !ends,
                        Self::CONTINUATION if ends => self.open = false,
                        _ => {}
                    }
                }
            }
        }
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::H2Frames;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut v = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn h2_header_blocks_are_followed_across_any_split() {
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        let settled = wire.len();
        wire.extend(frame(0x1, 0x0, &[0x82, 0x86])); // HEADERS, block open
        // A block opens once its HEADERS frame's header is in, and closes once
        // the CONTINUATION's is. (A frame in between would be a protocol
        // error; here it only shows payloads are skipped, not parsed.)
        let opens_at = settled + 9;
        wire.extend(frame(0x0, 0x0, &[0x1; 300]));
        let closes_at = wire.len() + 9;
        wire.extend(frame(0x9, 0x4, &[0x84])); // CONTINUATION, END_HEADERS
        for cut in 0..wire.len() {
            let mut f = H2Frames::default();
            let (a, b) = wire.split_at(cut);
            let open_a = f.feed(a);
            assert_eq!(open_a, (opens_at..closes_at).contains(&cut), "cut at {cut}");
            assert!(!f.feed(b), "closed at the end (cut at {cut})");
        }
        let mut f = H2Frames::default();
        assert!(!f.feed(&wire[..settled]));
        // HEADERS with END_HEADERS never opens a block.
        assert!(!f.feed(&frame(0x1, 0x4 | 0x1, &[0x82])));
    }
}

//! Synthesized sources: the REPL builds a model file out of pieces of what the user typed
//! (and of loaded files) plus generated text, checks it, and maps every diagnostic span
//! back onto the text the user wrote.

use crate::diag::Diagnostic;
use crate::span::{FileId, Span};

/// One copied piece: `synth[at..at + len]` came from `file[origin..origin + origin_len]`.
#[derive(Clone, Copy, Debug)]
struct Piece {
    at: usize,
    len: usize,
    file: FileId,
    origin: usize,
    origin_len: usize,
}

/// A generated source text with the origin of its copied pieces.
#[derive(Clone, Debug, Default)]
pub struct Synth {
    /// The text.
    pub text: String,
    pieces: Vec<Piece>,
}

impl Synth {
    /// An empty text.
    pub fn new() -> Synth {
        Synth::default()
    }

    /// Appends generated text (spans into it map nowhere).
    pub fn raw(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// Appends `s`, copied from `file` at `origin` (same length: offsets map one to one).
    pub fn copied(&mut self, s: &str, file: FileId, origin: usize) {
        self.stands_for(s, file, origin, s.len());
    }

    /// Appends `s`, which stands for `file[origin..origin + origin_len]` (a generated name
    /// for a literal): any span inside it maps to the whole original range.
    pub fn stands_for(&mut self, s: &str, file: FileId, origin: usize, origin_len: usize) {
        self.pieces.push(Piece {
            at: self.text.len(),
            len: s.len(),
            file,
            origin,
            origin_len,
        });
        self.text.push_str(s);
    }

    /// Where offset `o` of the synthesized text came from.
    fn map_offset(&self, o: usize, end: bool) -> Option<(FileId, usize, &Piece)> {
        self.pieces.iter().find_map(|p| {
            let inside = if end {
                o > p.at && o <= p.at + p.len
            } else {
                o >= p.at && o < p.at + p.len
            };
            if !inside {
                return None;
            }
            Some((p.file, p.origin + (o - p.at).min(p.origin_len), p))
        })
    }

    /// The original span of a span in the synthesized text (`file` is its id).
    pub fn map_span(&self, synth_file: FileId, s: Span) -> Option<Span> {
        if s.file != synth_file {
            return Some(s);
        }
        let (file, start, piece) = self.map_offset(s.start, false)?;
        if piece.len != piece.origin_len {
            return Some(Span::new(
                file,
                piece.origin,
                piece.origin + piece.origin_len,
            ));
        }
        let end = match self.map_offset(s.end.max(s.start + 1), true) {
            Some((f, e, _)) if f == file && e >= start => e,
            _ => piece.origin + piece.origin_len,
        };
        Some(Span::new(file, start, end.max(start)))
    }

    /// Moves a diagnostic's spans onto the original texts. Labels in generated text are
    /// dropped; a primary label there moves to `fallback`.
    pub fn map_diagnostic(&self, synth_file: FileId, d: Diagnostic, fallback: Span) -> Diagnostic {
        let mut out = d.clone();
        out.labels.clear();
        for l in d.labels {
            match self.map_span(synth_file, l.span) {
                Some(span) => out.labels.push(crate::diag::Label { span, ..l }),
                None if l.primary => out.labels.push(crate::diag::Label {
                    span: fallback,
                    message: String::new(),
                    primary: true,
                }),
                None => {}
            }
        }
        if !out.labels.iter().any(|l| l.primary) {
            out.labels.insert(
                0,
                crate::diag::Label {
                    span: fallback,
                    message: String::new(),
                    primary: true,
                },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_map_back() {
        let mut s = Synth::new();
        s.raw("model m {\n  ");
        s.copied("a + b", 3, 10);
        s.raw("\n  ");
        s.stands_for("__0", 3, 20, 8);
        let at = s.text.find("a + b").unwrap();
        let m = s.map_span(0, Span::new(0, at + 4, at + 5)).unwrap();
        assert_eq!(m, Span::new(3, 14, 15));
        let n = s.text.find("__0").unwrap();
        let m = s.map_span(0, Span::new(0, n, n + 3)).unwrap();
        assert_eq!(m, Span::new(3, 20, 28));
        assert_eq!(s.map_span(0, Span::new(0, 0, 5)), None);
        // Spans in other files are left alone.
        assert_eq!(s.map_span(0, Span::new(2, 0, 5)), Some(Span::new(2, 0, 5)));
    }
}

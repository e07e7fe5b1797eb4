//! The bundle's byte-level BPE tokenizer, without allocation.
//!
//! Encoding follows the host tokenizer (Hugging Face `tokenizers`): special tokens are matched
//! literally (leftmost, longest), the rest is cut by the bundle's [`PreTokenizer`] (SmolLM2's:
//! single digits and non-digit runs, each run by the GPT-2 pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`; or Qwen2's
//! pattern), and every piece's bytes are merged by rank. `\p{L}` is approximated by
//! `char::is_alphabetic` and `\p{N}` by `char::is_numeric` (equal for `\p{N}`); tests check
//! identical ids against the host tokenizer on every SST-2 sentence (SmolLM2) and on edge cases
//! of both patterns.
//!
//! The input is a list of text pieces read as one string, so a prompt prefix, the user's text
//! and a suffix are tokenized together without being copied into one buffer.

use heapless::Vec;

use crate::bundle::{Bundle, array};
use crate::error::Error;
use crate::format::{MERGE_RECORD_LEN, NO_TOKEN, PreTokenizer};
use crate::spm::SpmTables;

/// The tokenizer tables of a bundle: a byte-level BPE, or a SentencePiece vocabulary
/// ([`crate::spm`]) that the encoding and decoding go to instead.
#[derive(Clone, Copy, Debug)]
pub struct Tokenizer<'a> {
    sentencepiece: Option<SpmTables<'a>>,
    bos: u32,
    offsets: &'a [u8],
    vocab_bytes: &'a [u8],
    merges: &'a [u8],
    byte_tokens: &'a [u8],
    special_ids: &'a [u8],
    stop_ids: &'a [u8],
    source_ids: &'a [u8],
    pre_tokenizer: PreTokenizer,
}

/// Several `&str` read as their concatenation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Text<'t> {
    pieces: &'t [&'t str],
    pub(crate) len: usize,
}

impl<'t> Text<'t> {
    pub(crate) fn new(pieces: &'t [&'t str]) -> Self {
        Self {
            pieces,
            len: pieces.iter().map(|p| p.len()).sum(),
        }
    }

    fn locate(&self, mut at: usize) -> Option<(&'t str, usize)> {
        for piece in self.pieces {
            if at < piece.len() {
                return Some((piece, at));
            }
            at -= piece.len();
        }
        None
    }

    pub(crate) fn byte(&self, at: usize) -> Option<u8> {
        self.locate(at)
            .and_then(|(piece, offset)| piece.as_bytes().get(offset).copied())
    }

    fn char(&self, at: usize) -> Option<char> {
        self.locate(at)
            .and_then(|(piece, offset)| piece.get(offset..))
            .and_then(|rest| rest.chars().next())
    }

    pub(crate) fn starts_with(&self, at: usize, needle: &[u8]) -> bool {
        !needle.is_empty()
            && needle
                .iter()
                .enumerate()
                .all(|(i, &b)| self.byte(at + i) == Some(b))
    }
}

/// Token `id`'s bytes in `bytes`, between its `u32` offset and the next (empty for an unknown
/// id).
pub(crate) fn token_text<'a>(offsets: &[u8], bytes: &'a [u8], id: u32) -> &'a [u8] {
    let at = id as usize * 4;
    match (array::<4>(offsets, at), array::<4>(offsets, at + 4)) {
        (Ok(start), Ok(end)) => {
            let (start, end) = (u32::from_le_bytes(start), u32::from_le_bytes(end));
            bytes.get(start as usize..end as usize).unwrap_or(&[])
        }
        _ => &[],
    }
}

fn is_letter(c: char) -> bool {
    c.is_alphabetic()
}

fn is_other(c: char) -> bool {
    !c.is_whitespace() && !c.is_alphabetic() && !c.is_numeric()
}

impl<'a> Tokenizer<'a> {
    /// The tables of a parsed bundle.
    pub fn new(bundle: &Bundle<'a>) -> Self {
        let refs = &bundle.header().tokenizer;
        // Checked by `Bundle::parse`.
        let sentencepiece = refs.sentencepiece.and_then(|spm| {
            SpmTables::new(
                bundle.span(refs.vocab_offsets),
                bundle.span(refs.vocab_bytes),
                bundle.span(spm.scores),
                bundle.span(spm.token_types),
                bundle.span(spm.sorted_ids),
                bundle.span(spm.literal_ids),
            )
            .ok()
        });
        Self {
            sentencepiece,
            bos: refs.sentencepiece.map_or(NO_TOKEN, |spm| spm.bos),
            offsets: bundle.span(refs.vocab_offsets),
            vocab_bytes: bundle.span(refs.vocab_bytes),
            merges: bundle.span(refs.merges),
            byte_tokens: bundle.span(refs.byte_tokens),
            special_ids: bundle.span(refs.special_ids),
            stop_ids: bundle.span(refs.stop_ids),
            source_ids: bundle.span(refs.source_ids),
            pre_tokenizer: refs.pre_tokenizer,
        }
    }

    /// The id token `id` has in the source model's vocabulary: itself unless the bundle's
    /// vocabulary is trimmed to a task ([`crate::format::TokenizerRef::source_ids`]).
    pub fn source_id(&self, id: u32) -> u32 {
        if self.source_ids.is_empty() {
            return id;
        }
        array::<4>(self.source_ids, id as usize * 4)
            .map(u32::from_le_bytes)
            .unwrap_or(NO_TOKEN)
    }

    /// The raw bytes of token `id` (empty for an unknown id).
    pub fn token_bytes(&self, id: u32) -> &'a [u8] {
        token_text(self.offsets, self.vocab_bytes, id)
    }

    fn ids(table: &'a [u8]) -> impl Iterator<Item = u32> + 'a {
        table
            .chunks_exact(4)
            .map(|c| c.try_into().map(u32::from_le_bytes).unwrap_or(NO_TOKEN))
    }

    /// Whether `id` is a special token (matched literally, skipped when decoding).
    pub fn is_special(&self, id: u32) -> bool {
        Self::ids(self.special_ids).any(|s| s == id)
    }

    /// Whether `id` ends generation.
    pub fn is_stop(&self, id: u32) -> bool {
        Self::ids(self.stop_ids).any(|s| s == id)
    }

    /// The token a whole prompt starts with, when the tokenizer adds one (SentencePiece
    /// models' BOS).
    pub fn bos(&self) -> Option<u32> {
        (self.bos != NO_TOKEN).then_some(self.bos)
    }

    /// Appends the ids of a whole prompt, `pieces` read as one text, to `out`: [`Self::bos`]
    /// first, when there is one, then [`Self::encode`].
    pub fn encode_prompt<const N: usize>(
        &self,
        pieces: &[&str],
        out: &mut Vec<u32, N>,
    ) -> Result<(), Error> {
        if let Some(bos) = self.bos() {
            out.push(bos).map_err(|_| Error::InputTooLong)?;
        }
        self.encode(pieces, out)
    }

    /// Appends the ids of `pieces` (read as one text, nothing added before it) to `out`;
    /// [`Error::InputTooLong`] when they do not fit.
    pub fn encode<const N: usize>(
        &self,
        pieces: &[&str],
        out: &mut Vec<u32, N>,
    ) -> Result<(), Error> {
        if let Some(spm) = &self.sentencepiece {
            return spm.encode(pieces, true, out);
        }
        let text = Text::new(pieces);
        let mut start = 0;
        let mut at = 0;
        while at < text.len {
            match self.special_at(&text, at) {
                Some((id, len)) => {
                    self.encode_ordinary(&text, start, at, out)?;
                    out.push(id).map_err(|_| Error::InputTooLong)?;
                    at += len;
                    start = at;
                }
                None => at += 1,
            }
        }
        self.encode_ordinary(&text, start, text.len, out)
    }

    fn special_at(&self, text: &Text<'_>, at: usize) -> Option<(u32, usize)> {
        let mut best: Option<(u32, usize)> = None;
        for id in Self::ids(self.special_ids) {
            let bytes = self.token_bytes(id);
            if text.starts_with(at, bytes) && best.is_none_or(|(_, len)| bytes.len() > len) {
                best = Some((id, bytes.len()));
            }
        }
        best
    }

    /// Text between special tokens, cut by the pre-tokenizer: SmolLM2's digits split off one
    /// by one, then the GPT-2 pattern on each non-digit run; or Qwen2's pattern.
    fn encode_ordinary<const N: usize>(
        &self,
        text: &Text<'_>,
        start: usize,
        end: usize,
        out: &mut Vec<u32, N>,
    ) -> Result<(), Error> {
        if self.pre_tokenizer == PreTokenizer::Qwen2 {
            return self.encode_run(text, start, end, qwen2_piece_end, out);
        }
        let mut at = start;
        let mut run_start = start;
        while at < end {
            let Some(c) = text.char(at) else { break };
            if c.is_numeric() {
                self.encode_run(text, run_start, at, gpt2_piece_end, out)?;
                self.bpe(text, at, at + c.len_utf8(), out)?;
                run_start = at + c.len_utf8();
            }
            at += c.len_utf8();
        }
        self.encode_run(text, run_start, end, gpt2_piece_end, out)
    }

    /// `start..end` cut into pieces by `piece_end` (the end of the piece starting at a
    /// position), each merged on its own.
    fn encode_run<const N: usize>(
        &self,
        text: &Text<'_>,
        start: usize,
        end: usize,
        piece_end: fn(&Text<'_>, usize, usize) -> usize,
        out: &mut Vec<u32, N>,
    ) -> Result<(), Error> {
        let mut at = start;
        while at < end {
            let next = piece_end(text, at, end);
            self.bpe(text, at, next, out)?;
            at = next;
        }
        Ok(())
    }

    fn bpe<const N: usize>(
        &self,
        text: &Text<'_>,
        start: usize,
        end: usize,
        out: &mut Vec<u32, N>,
    ) -> Result<(), Error> {
        let first = out.len();
        for at in start..end {
            let byte = text.byte(at).unwrap_or(0);
            let id = array::<4>(self.byte_tokens, byte as usize * 4)
                .map(u32::from_le_bytes)
                .unwrap_or(NO_TOKEN);
            if id != NO_TOKEN {
                out.push(id).map_err(|_| Error::InputTooLong)?;
            }
        }
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            let symbols = out.get(first..).unwrap_or(&[]);
            for (i, pair) in symbols.windows(2).enumerate() {
                if let (Some(&left), Some(&right)) = (pair.first(), pair.get(1))
                    && let Some((rank, merged)) = self.merge(left, right)
                    && best.is_none_or(|(best_rank, _, _)| rank < best_rank)
                {
                    best = Some((rank, first + i, merged));
                }
            }
            let Some((_, at, merged)) = best else {
                return Ok(());
            };
            if let Some(slot) = out.get_mut(at) {
                *slot = merged;
            }
            if at + 1 < out.len() {
                out.remove(at + 1);
            }
        }
    }

    /// `(rank, merged id)` of the pair, by binary search over the sorted merge records.
    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let n = self.merges.len() / MERGE_RECORD_LEN;
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = mid * MERGE_RECORD_LEN;
            let key = (
                u32::from_le_bytes(array(self.merges, at).ok()?),
                u32::from_le_bytes(array(self.merges, at + 4).ok()?),
            );
            match key.cmp(&(left, right)) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Greater => hi = mid,
                core::cmp::Ordering::Equal => {
                    let rank = u32::from_le_bytes(array(self.merges, at + 8).ok()?);
                    let merged = u32::from_le_bytes(array(self.merges, at + 12).ok()?);
                    return Some((rank, merged));
                }
            }
        }
        None
    }

    /// Writes the text of `ids` (special tokens skipped) into `out`; returns the bytes written,
    /// stopping early when `out` is full.
    pub fn decode_into(&self, ids: &[u32], out: &mut [u8]) -> usize {
        if let Some(spm) = &self.sentencepiece {
            return spm.decode_into(ids, out);
        }
        let mut written = 0;
        for &id in ids {
            if self.is_special(id) {
                continue;
            }
            for &byte in self.token_bytes(id) {
                match out.get_mut(written) {
                    Some(slot) => *slot = byte,
                    None => return written,
                }
                written += 1;
            }
        }
        written
    }
}

/// The end of the run of `class` characters starting at `from` (`from` itself when there is
/// none), before `end`.
fn class_end(text: &Text<'_>, from: usize, end: usize, class: impl Fn(char) -> bool) -> usize {
    let mut i = from;
    while let Some(c) = (i < end)
        .then(|| text.char(i))
        .flatten()
        .filter(|&c| class(c))
    {
        i += c.len_utf8();
    }
    i
}

/// The whitespace run starting at `at` (before `end`): its end, where its last character
/// starts, and where its last line break ends (if it holds one).
struct Spaces {
    end: usize,
    last_start: usize,
    after_newline: Option<usize>,
}

impl Spaces {
    fn at(text: &Text<'_>, at: usize, end: usize) -> Self {
        let mut run = Self {
            end: at,
            last_start: at,
            after_newline: None,
        };
        while let Some(c) = (run.end < end)
            .then(|| text.char(run.end))
            .flatten()
            .filter(|c| c.is_whitespace())
        {
            run.last_start = run.end;
            run.end += c.len_utf8();
            if is_newline(c) {
                run.after_newline = Some(run.end);
            }
        }
        run
    }

    /// `\s+(?!\S)|\s+` on a non-empty run starting at `at`: the whole run at the end of the
    /// text or when it is one character, else all but its last character (which joins the
    /// next piece).
    fn piece_end(&self, at: usize, end: usize) -> usize {
        if self.end >= end || self.last_start == at {
            self.end
        } else {
            self.last_start
        }
    }
}

fn is_newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// Whether `text` holds one of the contraction suffixes `'s 't 're 've 'm 'll 'd` at `at` (the
/// apostrophe's position) within `end`, ASCII case ignored when `any_case`; its end.
fn contraction_end(text: &Text<'_>, at: usize, end: usize, any_case: bool) -> Option<usize> {
    ["s", "t", "re", "ve", "m", "ll", "d"]
        .into_iter()
        .find(|suffix| {
            at + 1 + suffix.len() <= end
                && suffix.bytes().enumerate().all(|(i, b)| {
                    let got = text.byte(at + 1 + i);
                    got == Some(b) || (any_case && got.map(|g| g.to_ascii_lowercase()) == Some(b))
                })
        })
        .map(|suffix| at + 1 + suffix.len())
}

/// End of the Qwen2 pre-token starting at `at` (before `end`): the first alternative of
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
/// \s*[\r\n]+|\s+(?!\S)|\s+` that matches, as the regex's leftmost-first alternation takes it.
fn qwen2_piece_end(text: &Text<'_>, at: usize, end: usize) -> usize {
    let Some(c) = (at < end).then(|| text.char(at)).flatten() else {
        return end;
    };
    if c == '\''
        && let Some(stop) = contraction_end(text, at, end, true)
    {
        return stop;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    let next = at + c.len_utf8();
    if !is_letter(c) && !c.is_numeric() && !is_newline(c) {
        let stop = class_end(text, next, end, is_letter);
        if stop > next {
            return stop;
        }
    }
    if is_letter(c) {
        return class_end(text, at, end, is_letter);
    }
    if c.is_numeric() {
        return next;
    }
    // ' '?[^\s\p{L}\p{N}]+[\r\n]*
    let from = if c == ' ' { next } else { at };
    let stop = class_end(text, from, end, is_other);
    if stop > from {
        return class_end(text, stop, end, is_newline);
    }
    // \s*[\r\n]+ (the whitespace run up to its last line break), else \s+(?!\S)|\s+: `c`
    // is whitespace here, every other character matched above.
    let spaces = Spaces::at(text, at, end);
    spaces
        .after_newline
        .unwrap_or_else(|| spaces.piece_end(at, end))
}

/// End of the GPT-2 pre-token starting at `at` (before `end`).
fn gpt2_piece_end(text: &Text<'_>, at: usize, end: usize) -> usize {
    let char_at = |i: usize| if i < end { text.char(i) } else { None };
    let Some(c) = char_at(at) else {
        return end;
    };
    if c == '\''
        && let Some(stop) = contraction_end(text, at, end, false)
    {
        return stop;
    }
    let after_space = if c == ' ' { at + 1 } else { at };
    for class in [is_letter as fn(char) -> bool, char::is_numeric, is_other] {
        let stop = class_end(text, after_space, end, class);
        if stop > after_space {
            return stop;
        }
    }
    let spaces = Spaces::at(text, at, end);
    if spaces.end == at {
        return at + c.len_utf8();
    }
    spaces.piece_end(at, end)
}

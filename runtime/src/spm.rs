//! The SentencePiece tokenizer of llama.cpp (`tokenizer.ggml.model = "llama"`, e.g. Gemma 3),
//! without allocation.
//!
//! Encoding follows llama.cpp's `llama_vocab::tokenize` for SPM vocabularies without a space
//! prefix (`add_space_prefix = false`):
//! 1. The text is partitioned on the literal tokens (user-defined always; control and unknown
//!    ones only when parsing specials), longest first: each literal splits every remaining raw
//!    fragment at all its occurrences, left to right, before the next literal is tried.
//! 2. In each raw fragment every `' '` reads as `"▁"` (U+2581). The fragment starts as one
//!    symbol per UTF-8 character; while two adjacent symbols concatenate to a token, the pair
//!    whose token scores highest merges (ties: the leftmost pair).
//! 3. A symbol that is a token gives its id; any other symbol (always a single character that
//!    is not a token) gives one byte token (`<0xXX>`) per byte.
//!
//! The highest-scoring-pair scan equals llama.cpp's priority queue: the queue holds exactly the
//! adjacent pairs that are tokens (a queued pair is stale once either symbol has grown, and
//! symbols only grow), ordered by score and then by the left symbol's position. Its
//! `rev_merge` fallback never fires: a merged symbol is a token by construction, and a single
//! character cannot equal the concatenation of two symbols. The escaping is virtual: symbols
//! are ranges of the original text, compared byte by byte with `' '` read as `"▁"`.
//!
//! Ids are built in place in the caller's output buffer: the fragment's symbol boundaries are
//! pushed there first, so the buffer needs room for one entry per character of the longest raw
//! fragment. The caller adds BOS.

use core::cmp::Ordering;

use heapless::Vec;

use crate::bundle::array;
use crate::error::Error;
use crate::tokenizer::{Text, token_text};

/// U+2581 `▁`, SentencePiece's stand-in for a space.
const SPACE_MARK: [u8; 3] = [0xE2, 0x96, 0x81];

/// What a token is, numbered as `tokenizer.ggml.token_type` numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum TokenType {
    /// 0, or any number llama.cpp does not know: never decoded.
    Undefined = 0,
    /// 1: ordinary text, `"▁"` for a space.
    Normal = 1,
    /// 2: the unknown token; matched literally only when parsing specials, never decoded.
    Unknown = 2,
    /// 3: a control token (`<bos>`, `<end_of_turn>`); matched literally only when parsing
    /// specials, never decoded.
    Control = 3,
    /// 4: a user-defined token, always matched literally and decoded as written.
    UserDefined = 4,
    /// 5: unused; never decoded.
    Unused = 5,
    /// 6: a byte token `<0xXX>`, decoded as that byte.
    Byte = 6,
}

impl TokenType {
    /// The type a `tokenizer.ggml.token_type` value stands for ([`TokenType::Undefined`] for
    /// unknown values, as llama.cpp reads them).
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }

    /// Whether tokens of this type are split off the text before SPM.
    pub fn is_literal(self, parse_special: bool) -> bool {
        match self {
            Self::UserDefined => true,
            Self::Control | Self::Unknown => parse_special,
            _ => false,
        }
    }
}

/// The tables of a SentencePiece vocabulary of `n` tokens, each a little-endian byte slice.
#[derive(Clone, Copy, Debug)]
pub struct SpmTables<'a> {
    offsets: &'a [u8],
    token_bytes: &'a [u8],
    scores: &'a [u8],
    token_types: &'a [u8],
    sorted_ids: &'a [u8],
    literal_ids: &'a [u8],
    max_token_len: usize,
}

/// A text fragment of the partition on literal tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    /// A literal token and the end of its text.
    Literal(u32, usize),
    /// Raw text up to the given end, for SPM.
    Raw(usize),
}

impl<'a> SpmTables<'a> {
    /// Borrows the tables: `offsets` (`u32`, `n + 1`, ascending, into `token_bytes`),
    /// `token_bytes` (every token's text, concatenated), `scores` (`f32`, `n`), `token_types`
    /// (one [`TokenType`] byte per token), `sorted_ids` (`u32`, `n`: every id, ordered by its
    /// token's bytes) and `literal_ids` (`u32`: the control, unknown and user-defined tokens,
    /// longest text first). [`Error::BadTokenizer`] when the lengths disagree or an offset
    /// falls outside `token_bytes`.
    pub fn new(
        offsets: &'a [u8],
        token_bytes: &'a [u8],
        scores: &'a [u8],
        token_types: &'a [u8],
        sorted_ids: &'a [u8],
        literal_ids: &'a [u8],
    ) -> Result<Self, Error> {
        let n = token_types.len();
        let lengths_agree = offsets.len() == (n + 1) * 4
            && scores.len() == n * 4
            && sorted_ids.len() == n * 4
            && literal_ids.len().is_multiple_of(4);
        if !lengths_agree {
            return Err(Error::BadTokenizer);
        }
        let mut previous = 0usize;
        let mut max_token_len = 0;
        for chunk in offsets.chunks_exact(4) {
            let offset = array::<4>(chunk, 0).map(u32::from_le_bytes)? as usize;
            if offset < previous || offset > token_bytes.len() {
                return Err(Error::BadTokenizer);
            }
            max_token_len = max_token_len.max(offset - previous);
            previous = offset;
        }
        Ok(Self {
            offsets,
            token_bytes,
            scores,
            token_types,
            sorted_ids,
            literal_ids,
            max_token_len,
        })
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.token_types.len()
    }

    /// The text of token `id` as stored (`"▁"` for spaces; empty for an unknown id).
    pub fn token_bytes(&self, id: u32) -> &'a [u8] {
        token_text(self.offsets, self.token_bytes, id)
    }

    /// The type of token `id` ([`TokenType::Undefined`] for an unknown id).
    pub fn token_type(&self, id: u32) -> TokenType {
        self.token_types
            .get(id as usize)
            .map_or(TokenType::Undefined, |&t| TokenType::from_u8(t))
    }

    /// The token whose stored text is `text`, if any.
    pub fn token_id(&self, text: &[u8]) -> Option<u32> {
        self.find_by(|token| text.cmp(token))
    }

    fn score(&self, id: u32) -> f32 {
        array::<4>(self.scores, id as usize * 4)
            .map(f32::from_le_bytes)
            .unwrap_or(f32::NEG_INFINITY)
    }

    fn id_in(table: &[u8], index: usize) -> Option<u32> {
        array::<4>(table, index * 4).ok().map(u32::from_le_bytes)
    }

    /// Binary search over the ids sorted by text; `compare` orders the key against a token's
    /// bytes.
    fn find_by(&self, compare: impl Fn(&[u8]) -> Ordering) -> Option<u32> {
        let (mut lo, mut hi) = (0usize, self.sorted_ids.len() / 4);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let id = Self::id_in(self.sorted_ids, mid)?;
            match compare(self.token_bytes(id)) {
                Ordering::Less => hi = mid,
                Ordering::Greater => lo = mid + 1,
                Ordering::Equal => return Some(id),
            }
        }
        None
    }

    /// The token of the escaped text `start..end`, if it is one.
    fn token_of(&self, text: &Text<'_>, start: usize, end: usize) -> Option<u32> {
        if end - start > self.max_token_len {
            return None;
        }
        self.find_by(|token| compare_escaped(text, start, end, token))
    }

    /// The token standing for one byte: `<0xXX>`, else the byte itself as a token.
    fn byte_token(&self, byte: u8) -> Result<u32, Error> {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let hex = |nibble: u8| HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
        let name = [b'<', b'0', b'x', hex(byte >> 4), hex(byte & 15), b'>'];
        self.token_id(&name)
            .or_else(|| self.token_id(&[byte]))
            .ok_or(Error::BadTokenizer)
    }

    /// Appends the ids of `pieces` (read as one text) to `out`, without BOS; control and
    /// unknown tokens written in the text map to their ids only with `parse_special`.
    /// [`Error::InputTooLong`] when they do not fit (see the module docs for the room needed);
    /// [`Error::BadTokenizer`] when a byte has no token.
    pub fn encode<const N: usize>(
        &self,
        pieces: &[&str],
        parse_special: bool,
        out: &mut Vec<u32, N>,
    ) -> Result<(), Error> {
        self.encode_into(pieces, parse_special, out, &mut |_| {})
    }

    /// [`SpmTables::encode`] into a growing vector (feature `alloc`), calling `merged`, when
    /// given, with the token of every merge on the way: with those and the output kept, a
    /// trimmed vocabulary tokenizes the text as the whole one does (a merge that never won
    /// cannot change which one wins).
    #[cfg(any(test, feature = "alloc"))]
    pub fn encode_to_vec(
        &self,
        pieces: &[&str],
        parse_special: bool,
        out: &mut alloc::vec::Vec<u32>,
        merged: Option<&mut dyn FnMut(u32)>,
    ) -> Result<(), Error> {
        match merged {
            Some(merged) => self.encode_into(pieces, parse_special, out, merged),
            None => self.encode_into(pieces, parse_special, out, &mut |_| {}),
        }
    }

    fn encode_into<B: IdBuffer>(
        &self,
        pieces: &[&str],
        parse_special: bool,
        out: &mut B,
        merged: &mut dyn FnMut(u32),
    ) -> Result<(), Error> {
        let text = Text::new(pieces);
        let mut at = 0;
        while at < text.len {
            match self.item_at(&text, at, parse_special) {
                Item::Literal(id, end) => {
                    out.push(id)?;
                    at = end;
                }
                Item::Raw(end) => {
                    self.encode_fragment(&text, at, end, out, merged)?;
                    at = end;
                }
            }
        }
        Ok(())
    }

    /// The partition item starting at `at`, found by descending from the whole text: in a
    /// range the first literal (in order, from `level`) that occurs splits it at every
    /// occurrence, and the part holding `at` is partitioned by the literals after it. Literals
    /// before the first that occurs cannot occur in any part of the range.
    fn item_at(&self, text: &Text<'_>, at: usize, parse_special: bool) -> Item {
        let (mut start, mut end, mut level) = (0, text.len, 0);
        loop {
            let Some((index, id, literal)) =
                self.first_literal(text, start, end, level, parse_special)
            else {
                return Item::Raw(end);
            };
            let mut from = start;
            loop {
                match find_in(text, from, end, literal) {
                    Some(found) if found == at => return Item::Literal(id, at + literal.len()),
                    Some(found) if found < at => from = found + literal.len(),
                    next => {
                        start = from;
                        end = next.unwrap_or(end);
                        level = index + 1;
                        break;
                    }
                }
            }
        }
    }

    /// `(index in the literal list, id, text)` of the first literal from `level` that occurs
    /// in `start..end`.
    fn first_literal(
        &self,
        text: &Text<'_>,
        start: usize,
        end: usize,
        level: usize,
        parse_special: bool,
    ) -> Option<(usize, u32, &'a [u8])> {
        let mut present = [0u64; 4];
        for at in start..end {
            let byte = usize::from(text.byte(at).unwrap_or(0));
            if let Some(word) = present.get_mut(byte / 64) {
                *word |= 1 << (byte % 64);
            }
        }
        let starts_here = |byte: u8| {
            let byte = usize::from(byte);
            present
                .get(byte / 64)
                .is_some_and(|word| word & (1 << (byte % 64)) != 0)
        };
        (level..self.literal_ids.len() / 4).find_map(|index| {
            let id = Self::id_in(self.literal_ids, index)?;
            let literal = self.token_bytes(id);
            if !literal.first().is_some_and(|&b| starts_here(b))
                || !self.token_type(id).is_literal(parse_special)
            {
                return None;
            }
            find_in(text, start, end, literal).map(|_| (index, id, literal))
        })
    }

    /// SPM on the raw fragment `start..end`: symbol boundaries pushed to `out`, merged by
    /// score, then replaced by their ids.
    fn encode_fragment<B: IdBuffer>(
        &self,
        text: &Text<'_>,
        start: usize,
        end: usize,
        out: &mut B,
        merged: &mut dyn FnMut(u32),
    ) -> Result<(), Error> {
        let first = out.len();
        let mut at = start;
        while at < end {
            out.push(u32::try_from(at).map_err(|_| Error::InputTooLong)?)?;
            at += utf8_len(text.byte(at).unwrap_or(0)).min(end - at);
        }
        let boundary = |out: &B, index: usize| out.get(index).map_or(end, |b| b as usize);
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for index in first..out.len().saturating_sub(1) {
                let (left, right_end) = (boundary(out, index), boundary(out, index + 2));
                if let Some(id) = self.token_of(text, left, right_end) {
                    let score = self.score(id);
                    if best.is_none_or(|(best_score, _, _)| score > best_score) {
                        best = Some((score, index, id));
                    }
                }
            }
            let Some((_, index, id)) = best else { break };
            merged(id);
            out.remove(index + 1);
        }
        let mut index = first;
        while index < out.len() {
            let (symbol_start, symbol_end) = (boundary(out, index), boundary(out, index + 1));
            if let Some(id) = self.token_of(text, symbol_start, symbol_end) {
                out.set(index, id);
                index += 1;
                continue;
            }
            for (k, at) in (symbol_start..symbol_end).enumerate() {
                let id = self.byte_token(text.byte(at).unwrap_or(0))?;
                if k == 0 {
                    out.set(index, id);
                } else {
                    out.insert(index + k, id)?;
                }
            }
            index += symbol_end - symbol_start;
        }
        Ok(())
    }

    /// Writes the text of `ids` into `out` as llama.cpp detokenizes without specials: normal
    /// tokens with `"▁"` read as `' '`, user-defined tokens as written, byte tokens as their
    /// byte, everything else skipped. Returns the bytes written, stopping early when `out` is
    /// full.
    pub fn decode_into(&self, ids: &[u32], out: &mut [u8]) -> usize {
        let mut written = 0;
        let mut put = |byte: u8| match out.get_mut(written) {
            Some(slot) => {
                *slot = byte;
                written += 1;
                true
            }
            None => false,
        };
        for &id in ids {
            let bytes = self.token_bytes(id);
            let complete = match self.token_type(id) {
                TokenType::Normal => {
                    let mut rest = bytes;
                    let mut complete = true;
                    while let Some(&byte) = rest.first() {
                        let (byte, skip) = if rest.starts_with(&SPACE_MARK) {
                            (b' ', SPACE_MARK.len())
                        } else {
                            (byte, 1)
                        };
                        if !put(byte) {
                            complete = false;
                            break;
                        }
                        rest = rest.get(skip..).unwrap_or(&[]);
                    }
                    complete
                }
                TokenType::UserDefined => bytes.iter().all(|&byte| put(byte)),
                TokenType::Byte => byte_of(bytes).is_none_or(&mut put),
                _ => true,
            };
            if !complete {
                break;
            }
        }
        written
    }
}

/// The bytes of `start..end`, every `' '` read as `"▁"`, ordered against `token`.
fn compare_escaped(text: &Text<'_>, start: usize, end: usize, token: &[u8]) -> Ordering {
    let mut rest = token;
    for at in start..end {
        let byte = text.byte(at).unwrap_or(0);
        let escaped: &[u8] = if byte == b' ' {
            &SPACE_MARK
        } else {
            core::slice::from_ref(&byte)
        };
        for &b in escaped {
            let Some((&t, tail)) = rest.split_first() else {
                return Ordering::Greater;
            };
            match b.cmp(&t) {
                Ordering::Equal => rest = tail,
                unequal => return unequal,
            }
        }
    }
    if rest.is_empty() {
        Ordering::Equal
    } else {
        Ordering::Less
    }
}

/// The first position in `from..end` where `needle` starts and ends before `end`.
fn find_in(text: &Text<'_>, from: usize, end: usize, needle: &[u8]) -> Option<usize> {
    let last = end.checked_sub(needle.len())?;
    (from..=last).find(|&at| text.starts_with(at, needle))
}

/// The length llama.cpp gives a UTF-8 sequence from its first byte (a stray continuation byte
/// is a sequence of one).
fn utf8_len(lead: u8) -> usize {
    match lead >> 4 {
        0xC | 0xD => 2,
        0xE => 3,
        0xF => 4,
        _ => 1,
    }
}

/// The byte a `<0xXX>` token stands for.
fn byte_of(name: &[u8]) -> Option<u8> {
    let digits = name.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    let text = core::str::from_utf8(digits).ok()?;
    (digits.len() == 2).then_some(())?;
    u8::from_str_radix(text, 16).ok()
}

/// Where ids are built: a fixed-capacity `heapless::Vec` or, with `alloc`, a `Vec`.
trait IdBuffer {
    fn ids(&self) -> &[u32];
    fn ids_mut(&mut self) -> &mut [u32];
    fn push(&mut self, id: u32) -> Result<(), Error>;
    /// Inserts at `index`, at most the length.
    fn insert_within(&mut self, index: usize, id: u32) -> Result<(), Error>;
    /// Removes `index`, below the length.
    fn remove_within(&mut self, index: usize);

    fn len(&self) -> usize {
        self.ids().len()
    }
    fn get(&self, index: usize) -> Option<u32> {
        self.ids().get(index).copied()
    }
    fn set(&mut self, index: usize, id: u32) {
        if let Some(slot) = self.ids_mut().get_mut(index) {
            *slot = id;
        }
    }
    /// Inserts at `index` (appends when past the end).
    fn insert(&mut self, index: usize, id: u32) -> Result<(), Error> {
        self.insert_within(index.min(self.len()), id)
    }
    /// Removes `index` (nothing when past the end).
    fn remove(&mut self, index: usize) {
        if index < self.len() {
            self.remove_within(index);
        }
    }
}

impl<const N: usize> IdBuffer for Vec<u32, N> {
    fn ids(&self) -> &[u32] {
        self
    }
    fn ids_mut(&mut self) -> &mut [u32] {
        self
    }
    fn push(&mut self, id: u32) -> Result<(), Error> {
        Vec::push(self, id).map_err(|_| Error::InputTooLong)
    }
    fn insert_within(&mut self, index: usize, id: u32) -> Result<(), Error> {
        Vec::insert(self, index, id).map_err(|_| Error::InputTooLong)
    }
    fn remove_within(&mut self, index: usize) {
        Vec::remove(self, index);
    }
}

#[cfg(any(test, feature = "alloc"))]
impl IdBuffer for alloc::vec::Vec<u32> {
    fn ids(&self) -> &[u32] {
        self
    }
    fn ids_mut(&mut self) -> &mut [u32] {
        self
    }
    fn push(&mut self, id: u32) -> Result<(), Error> {
        alloc::vec::Vec::push(self, id);
        Ok(())
    }
    fn insert_within(&mut self, index: usize, id: u32) -> Result<(), Error> {
        alloc::vec::Vec::insert(self, index, id);
        Ok(())
    }
    fn remove_within(&mut self, index: usize) {
        alloc::vec::Vec::remove(self, index);
    }
}

/// The tables of [`SpmTables`] as owned bytes (feature `alloc`), built from a vocabulary.
#[cfg(any(test, feature = "alloc"))]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnedSpmTables {
    /// `u32` offsets of every token into `token_bytes`, `n + 1`.
    pub offsets: alloc::vec::Vec<u8>,
    /// Every token's text, concatenated.
    pub token_bytes: alloc::vec::Vec<u8>,
    /// `f32` score of every token.
    pub scores: alloc::vec::Vec<u8>,
    /// [`TokenType`] of every token, one byte each.
    pub token_types: alloc::vec::Vec<u8>,
    /// `u32` ids ordered by their token's bytes.
    pub sorted_ids: alloc::vec::Vec<u8>,
    /// `u32` ids of the control, unknown and user-defined tokens, longest text first, then by
    /// id.
    pub literal_ids: alloc::vec::Vec<u8>,
    /// The longest token's length, found when the tables were built and checked, so that
    /// borrowing them ([`OwnedSpmTables::tables`], once per text on the host) does not scan
    /// every offset again.
    max_token_len: usize,
}

#[cfg(any(test, feature = "alloc"))]
impl OwnedSpmTables {
    /// The tables of a vocabulary: each token's text, score and `tokenizer.ggml.token_type`
    /// value. [`Error::BadTokenizer`] when the three lengths differ or the text exceeds 4 GiB.
    ///
    /// llama.cpp sorts the literals by length alone with an unstable sort; ties go here by id.
    /// The order of equal-length literals matters only where one's occurrence can overlap
    /// another's, which Gemma 3's (`<…>`, `[…]`, runs of one whitespace character) cannot.
    pub fn build<T: AsRef<[u8]>>(
        vocab: &[T],
        scores: &[f32],
        token_types: &[u8],
    ) -> Result<Self, Error> {
        use alloc::vec::Vec;
        if vocab.len() != scores.len() || vocab.len() != token_types.len() {
            return Err(Error::BadTokenizer);
        }
        let to_u32 = |n: usize| u32::try_from(n).map_err(|_| Error::BadTokenizer);
        let mut offsets = Vec::with_capacity((vocab.len() + 1) * 4);
        let mut token_bytes = Vec::new();
        offsets.extend_from_slice(&0u32.to_le_bytes());
        for token in vocab {
            token_bytes.extend_from_slice(token.as_ref());
            offsets.extend_from_slice(&to_u32(token_bytes.len())?.to_le_bytes());
        }
        let ids = (0..vocab.len())
            .map(to_u32)
            .collect::<Result<Vec<u32>, Error>>()?;
        let text = |id: &u32| vocab.get(*id as usize).map_or(&[][..], AsRef::as_ref);
        let mut sorted = ids.clone();
        sorted.sort_by(|a, b| text(a).cmp(text(b)).then(a.cmp(b)));
        let mut literals: Vec<u32> = ids
            .into_iter()
            .filter(|id| {
                let kind = token_types.get(*id as usize).copied().unwrap_or(0);
                TokenType::from_u8(kind).is_literal(true)
            })
            .collect();
        literals.sort_by(|a, b| text(b).len().cmp(&text(a).len()).then(a.cmp(b)));
        let le_bytes = |ids: &[u32]| ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        let mut owned = Self {
            offsets,
            token_bytes,
            scores: scores.iter().flat_map(|s| s.to_le_bytes()).collect(),
            token_types: token_types.to_vec(),
            sorted_ids: le_bytes(&sorted),
            literal_ids: le_bytes(&literals),
            max_token_len: 0,
        };
        owned.max_token_len = SpmTables::new(
            &owned.offsets,
            &owned.token_bytes,
            &owned.scores,
            &owned.token_types,
            &owned.sorted_ids,
            &owned.literal_ids,
        )?
        .max_token_len;
        Ok(owned)
    }

    /// The tables borrowed from these bytes, checked when they were built ([`Error::BadTokenizer`]
    /// only if a field's length was changed since).
    pub fn tables(&self) -> Result<SpmTables<'_>, Error> {
        let n = self.token_types.len();
        let lengths_agree = self.offsets.len() == (n + 1) * 4
            && self.scores.len() == n * 4
            && self.sorted_ids.len() == n * 4
            && self.literal_ids.len().is_multiple_of(4);
        if !lengths_agree {
            return Err(Error::BadTokenizer);
        }
        Ok(SpmTables {
            offsets: &self.offsets,
            token_bytes: &self.token_bytes,
            scores: &self.scores,
            token_types: &self.token_types,
            sorted_ids: &self.sorted_ids,
            literal_ids: &self.literal_ids,
            max_token_len: self.max_token_len,
        })
    }
}

#[cfg(test)]
mod tests;

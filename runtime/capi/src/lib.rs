//! The runtime's C API (`include/whittle.h`): check a bundle in memory, size an arena for it,
//! and classify or generate in that arena, on the portable kernels. Nothing is allocated; the
//! caller owns every byte: the bundle (64-byte aligned, unchanged while in use), the arena
//! (4-byte aligned, at least `whittle_arena_bytes`), the input and the output buffers.
//!
//! Every function returns a [`WhittleStatus`]; a null or misaligned pointer is
//! `WHITTLE_STATUS_INVALID_ARGUMENT`, never undefined behaviour the API could detect. Each call
//! parses the bundle again (zero-copy, but its checksums are a pass over its bytes), so a
//! handle holds no state and any number of calls can share it.
#![no_std]

use whittle_runtime::kernels::Portable;
use whittle_runtime::{Bundle, Error, Session};

/// Tokens of prompt and answer a session holds: `context` is one of 64, 128, 256 and 512, at
/// most the model's own context; `whittle_arena_bytes` sizes the arena for it.
pub const WHITTLE_MAX_CONTEXT: usize = 512;

/// Runs `$run::<C>($args)` for the context `C` equal to `$context`.
macro_rules! with_context {
    ($context:expr, $run:ident($($arg:expr),*)) => {
        match $context {
            64 => $run::<64>($($arg),*),
            128 => $run::<128>($($arg),*),
            256 => $run::<256>($($arg),*),
            512 => $run::<512>($($arg),*),
            _ => WhittleStatus::InvalidArgument,
        }
    };
}

/// Why a call failed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhittleStatus {
    /// The call did what it says.
    Ok = 0,
    /// A pointer is null or misaligned, a length is zero where data is needed, or a text is
    /// not UTF-8.
    InvalidArgument = 1,
    /// The bytes are not a whittle bundle this runtime reads (magic, version, checksums,
    /// shapes): re-pack it with `whittle pack`.
    InvalidBundle = 2,
    /// The arena is smaller than `whittle_arena_bytes` or not 4-byte aligned.
    ArenaTooSmall = 3,
    /// The prompt does not fit the session's context.
    InputTooLong = 4,
    /// Classification asked of a bundle whose task is not classification.
    NotClassification = 5,
    /// Generation asked of a bundle whose head is task-pruned.
    NoFullHead = 6,
    /// The buffer for the label scores holds fewer than the bundle's labels.
    BufferTooSmall = 7,
    /// The context asked for is longer than the model's own: choose a smaller one.
    ContextTooLong = 8,
}

/// A bundle `whittle_open` accepted: its bytes, which must stay in place and unchanged while
/// the bundle is used.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WhittleBundle {
    /// First byte of the bundle (64-byte aligned).
    pub bytes: *const u8,
    /// Length of the bundle in bytes.
    pub len: usize,
}

fn status(error: Error) -> WhittleStatus {
    match error {
        Error::ArenaTooSmall { .. } | Error::MisalignedArena => WhittleStatus::ArenaTooSmall,
        Error::InputTooLong => WhittleStatus::InputTooLong,
        Error::ContextTooLong => WhittleStatus::ContextTooLong,
        Error::NotClassification => WhittleStatus::NotClassification,
        Error::NoFullHead => WhittleStatus::NoFullHead,
        _ => WhittleStatus::InvalidBundle,
    }
}

/// The bytes behind `pointer`, or `None` when it is null.
///
/// # Safety
/// A non-null `pointer` must be valid for reads of `len` bytes for `'a`.
unsafe fn bytes<'a>(pointer: *const u8, len: usize) -> Option<&'a [u8]> {
    // SAFETY: the caller guarantees `len` readable bytes behind a non-null pointer.
    (!pointer.is_null()).then(|| unsafe { core::slice::from_raw_parts(pointer, len) })
}

/// The writable bytes behind `pointer`, or `None` when it is null.
///
/// # Safety
/// A non-null `pointer` must be valid for writes of `len` bytes for `'a`, with no other
/// reference to them.
unsafe fn bytes_mut<'a>(pointer: *mut u8, len: usize) -> Option<&'a mut [u8]> {
    // SAFETY: the caller guarantees `len` writable, unaliased bytes behind a non-null pointer.
    (!pointer.is_null()).then(|| unsafe { core::slice::from_raw_parts_mut(pointer, len) })
}

/// The bundle `handle` points to, parsed again.
///
/// # Safety
/// `handle` is null or points to a `WhittleBundle` filled by `whittle_open`, whose bytes are
/// still in place.
unsafe fn reopen<'a>(handle: *const WhittleBundle) -> Result<Bundle<'a>, WhittleStatus> {
    // SAFETY: the caller guarantees a null or valid handle.
    let handle = unsafe { handle.as_ref() }.ok_or(WhittleStatus::InvalidArgument)?;
    // SAFETY: the caller keeps the bytes `whittle_open` accepted in place.
    let bytes = unsafe { bytes(handle.bytes, handle.len) }.ok_or(WhittleStatus::InvalidArgument)?;
    Bundle::parse(bytes).map_err(status)
}

/// The text behind `text`, which must be UTF-8.
///
/// # Safety
/// As [`bytes`].
unsafe fn text<'a>(text: *const u8, len: usize) -> Result<&'a str, WhittleStatus> {
    // SAFETY: forwarded to the caller.
    let bytes = unsafe { bytes(text, len) }.ok_or(WhittleStatus::InvalidArgument)?;
    core::str::from_utf8(bytes).map_err(|_| WhittleStatus::InvalidArgument)
}

/// Checks the bundle in `bytes[0..len]` (magic, version, checksums, every shape) and fills
/// `*out` with it.
///
/// # Safety
/// `bytes` must be readable for `len` bytes, and `out` writable, or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn whittle_open(
    bytes: *const u8,
    len: usize,
    out: *mut WhittleBundle,
) -> WhittleStatus {
    // SAFETY: forwarded to the caller.
    let Some(data) = (unsafe { self::bytes(bytes, len) }) else {
        return WhittleStatus::InvalidArgument;
    };
    if let Err(error) = Bundle::parse(data) {
        return match error {
            Error::MisalignedBundle => WhittleStatus::InvalidArgument,
            error => status(error),
        };
    }
    // SAFETY: the caller guarantees `out` is null or writable.
    match unsafe { out.as_mut() } {
        Some(out) => {
            *out = WhittleBundle { bytes, len };
            WhittleStatus::Ok
        }
        None => WhittleStatus::InvalidArgument,
    }
}

/// Bytes of arena a session of `context` tokens (64, 128, 256 or 512) needs with this bundle
/// (0 when the handle or the context is invalid).
///
/// # Safety
/// `bundle` is null or was filled by `whittle_open`, its bytes still in place.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn whittle_arena_bytes(
    bundle: *const WhittleBundle,
    context: usize,
) -> usize {
    if !matches!(context, 64 | 128 | 256 | 512) {
        return 0;
    }
    // SAFETY: forwarded to the caller.
    unsafe { reopen(bundle) }.map_or(0, |bundle| bundle.arena_bytes(context))
}

/// Number of labels of a classification bundle (0 otherwise, or when the handle is invalid).
///
/// # Safety
/// As [`whittle_arena_bytes`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn whittle_label_count(bundle: *const WhittleBundle) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { reopen(bundle) }.map_or(0, |bundle| bundle.header().task.labels.len())
}

/// The name of label `index` (as in the task's data): `*name` points into the bundle, `*len`
/// bytes long, not NUL-terminated.
///
/// # Safety
/// As [`whittle_arena_bytes`]; `name` and `len` writable or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn whittle_label_name(
    bundle: *const WhittleBundle,
    index: usize,
    name: *mut *const u8,
    len: *mut usize,
) -> WhittleStatus {
    // SAFETY: forwarded to the caller.
    let bundle = match unsafe { reopen(bundle) } {
        Ok(bundle) => bundle,
        Err(status) => return status,
    };
    let Some(label) = bundle.header().task.labels.get(index) else {
        return WhittleStatus::InvalidArgument;
    };
    // SAFETY: the caller guarantees both are null or writable.
    match unsafe { (name.as_mut(), len.as_mut()) } {
        (Some(name), Some(len)) => {
            *name = label.name.as_ptr();
            *len = label.name.len();
            WhittleStatus::Ok
        }
        _ => WhittleStatus::InvalidArgument,
    }
}

/// Classifies the UTF-8 text `text[0..text_len]` in a session of `context` tokens: `*label`
/// gets the label's index and `scores[0..n]` the label scores (n = `whittle_label_count`;
/// `scores_len` must be at least n).
///
/// # Safety
/// As [`whittle_arena_bytes`]; `arena` writable for `arena_len` bytes and not used elsewhere
/// during the call, `text` readable for `text_len` bytes, `label` writable, `scores` writable
/// for `scores_len` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn whittle_classify(
    bundle: *const WhittleBundle,
    context: usize,
    arena: *mut u8,
    arena_len: usize,
    text: *const u8,
    text_len: usize,
    label: *mut usize,
    scores: *mut f32,
    scores_len: usize,
) -> WhittleStatus {
    // SAFETY: forwarded to the caller.
    let inputs = unsafe {
        (
            reopen(bundle),
            bytes_mut(arena, arena_len),
            self::text(text, text_len),
            label.as_mut(),
        )
    };
    let (bundle, Some(arena), input, Some(label)) = inputs else {
        return WhittleStatus::InvalidArgument;
    };
    let (bundle, input) = match (bundle, input) {
        (Ok(bundle), Ok(input)) => (bundle, input),
        (Err(status), _) | (_, Err(status)) => return status,
    };
    if scores.is_null() || !scores.is_aligned() {
        return WhittleStatus::InvalidArgument;
    }
    // SAFETY: `scores` is non-null and aligned (checked) and writable for `scores_len` floats
    // (the caller's guarantee).
    let scores = unsafe { core::slice::from_raw_parts_mut(scores, scores_len) };
    with_context!(context, classify_in(&bundle, arena, input, label, scores))
}

fn classify_in<const CONTEXT: usize>(
    bundle: &Bundle<'_>,
    arena: &mut [u8],
    input: &str,
    label: &mut usize,
    scores: &mut [f32],
) -> WhittleStatus {
    let mut session = match Session::<_, CONTEXT>::new(bundle, Portable, arena) {
        Ok(session) => session,
        Err(error) => return status(error),
    };
    let computed = match session.label_scores(input) {
        Ok(scores) => scores,
        Err(error) => return status(error),
    };
    let Some(out) = scores.get_mut(..computed.len()) else {
        return WhittleStatus::BufferTooSmall;
    };
    let best = match session.classify_scores(&computed) {
        Ok(best) => best,
        Err(error) => return status(error),
    };
    out.copy_from_slice(&computed);
    *label = best.label_index;
    WhittleStatus::Ok
}

/// Greedy generation, in a session of `context` tokens, after the prompt built from the UTF-8
/// text `prompt[0..prompt_len]`, at most `max_new_tokens` tokens: the text goes to
/// `out[0..out_len]` (cut at a whole character), `*written` gets its length. Needs a bundle
/// with the full head.
///
/// # Safety
/// As [`whittle_classify`]; `out` writable for `out_len` bytes, `written` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn whittle_generate(
    bundle: *const WhittleBundle,
    context: usize,
    arena: *mut u8,
    arena_len: usize,
    prompt: *const u8,
    prompt_len: usize,
    max_new_tokens: usize,
    out: *mut u8,
    out_len: usize,
    written: *mut usize,
) -> WhittleStatus {
    // SAFETY: forwarded to the caller.
    let inputs = unsafe {
        (
            reopen(bundle),
            bytes_mut(arena, arena_len),
            text(prompt, prompt_len),
            bytes_mut(out, out_len),
            written.as_mut(),
        )
    };
    let (bundle, Some(arena), input, Some(out), Some(written)) = inputs else {
        return WhittleStatus::InvalidArgument;
    };
    let (bundle, input) = match (bundle, input) {
        (Ok(bundle), Ok(input)) => (bundle, input),
        (Err(status), _) | (_, Err(status)) => return status,
    };
    with_context!(
        context,
        generate_in(&bundle, arena, input, max_new_tokens, out, written)
    )
}

fn generate_in<const CONTEXT: usize>(
    bundle: &Bundle<'_>,
    arena: &mut [u8],
    input: &str,
    max_new_tokens: usize,
    out: &mut [u8],
    written: &mut usize,
) -> WhittleStatus {
    let mut session = match Session::<_, CONTEXT>::new(bundle, Portable, arena) {
        Ok(session) => session,
        Err(error) => return status(error),
    };
    match session.generate(input, max_new_tokens, out) {
        Ok(text) => {
            *written = text.len();
            WhittleStatus::Ok
        }
        Err(error) => status(error),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    unsafe extern "C" {
        /// The C runtime's `abort` (newlib's, or the firmware's own).
        safe fn abort() -> !;
    }
    abort()
}

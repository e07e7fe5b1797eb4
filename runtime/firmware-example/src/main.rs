//! A firmware-style app: `no_std`, `no_main`, the bundle linked in with `include_bytes!`, a
//! fixed arena in a static buffer, no allocator. It shows how the runtime links on a
//! Cortex-M (`cargo build --release --manifest-path runtime/firmware-example/Cargo.toml --target thumbv7em-none-eabihf`);
//! a real board adds its HAL, a reset handler and a way to report the label.
//!
//! The bundle is `runtime/firmware-example/tiny.wbundle`, a tiny random model made by the runtime's
//! tests (`WHITTLE_WRITE_TINY_BUNDLE=1 cargo test -p whittle-runtime --lib`).
#![no_std]
#![no_main]

use whittle_runtime::kernels::Portable;
use whittle_runtime::{Bundle, Session};

/// Tokens of prompt and answer the app supports.
const CONTEXT: usize = 32;
/// Arena bytes: at least `Bundle::arena_bytes(CONTEXT)` of the linked bundle (checked at run
/// time; an arena that is too small is an error, never an overrun).
const ARENA_BYTES: usize = 16 * 1024;

#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

static BUNDLE: &Aligned<[u8]> = &Aligned(*include_bytes!("../tiny.wbundle"));

/// Returns the label index of `text`, or 255 when the bundle is refused.
fn classify(arena: &mut [u8], text: &str) -> u8 {
    let Ok(bundle) = Bundle::parse(&BUNDLE.0) else {
        return 255;
    };
    let Ok(mut session) = Session::<_, CONTEXT>::new(&bundle, Portable, arena) else {
        return 255;
    };
    match session.classify(text) {
        Ok(label) => label.label_index as u8,
        Err(_) => 255,
    }
}

/// The entry a reset handler would call.
#[unsafe(no_mangle)]
pub extern "C" fn whittle_main() -> u8 {
    let mut arena = Aligned([0u8; ARENA_BYTES]);
    classify(&mut arena.0, "a charming film")
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

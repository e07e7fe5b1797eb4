//! Firmware that classifies one input with a bundle linked into flash, on a Cortex-M4F
//! (`thumbv7em-none-eabihf`): `no_std`, no allocator, the arena a fixed buffer on the stack
//! sized by the build script from the bundle (`Bundle::arena_bytes`). It prints the label and
//! the label scores over semihosting and exits with the status: 0 when it classified, 1 on an
//! error, a panic or a HardFault.
//!
//! `cargo run --release` in this folder runs it on QEMU's mps2-an386; `WHITTLE_BUNDLE` and
//! `WHITTLE_INPUT` choose the bundle and the text at build time (`build.rs`). A real board
//! adds its memory map to `memory/` (`WHITTLE_MEMORY`; `stm32h743` is there) and swaps
//! semihosting for its UART or defmt where no debugger is attached.
#![no_std]
#![no_main]

use cortex_m_rt::{ExceptionFrame, entry, exception};
use cortex_m_semihosting::{debug, hprint, hprintln};
use whittle_runtime::kernels::Portable;
use whittle_runtime::{Bundle, Error, Session};

mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}
use config::{ARENA_BYTES, CONTEXT, INPUT};

#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

/// The bundle, in flash, 64-byte aligned as `Bundle::parse` requires.
static BUNDLE: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/bundle.wbundle")));

unsafe extern "C" {
    /// Start of `.data`'s initial values in flash: everything before it is code and read-only
    /// data (cortex-m-rt's `link.x`).
    static __sidata: u8;
    static __sdata: u8;
    static __edata: u8;
    static __ebss: u8;
}

#[entry]
fn main() -> ! {
    let mut arena = Aligned([0u8; ARENA_BYTES]);
    let status = match classify(&mut arena.0) {
        Ok(()) => debug::EXIT_SUCCESS,
        Err(error) => {
            hprintln!("whittle-firmware: error: {}", error);
            debug::EXIT_FAILURE
        }
    };
    debug::exit(status);
    loop {}
}

/// Classifies [`INPUT`] and prints `label=<index> name=<label> scores=<hex bits,...>` (the
/// exact bits, so a host can compare them) and the memory the firmware takes.
fn classify(arena: &mut [u8]) -> Result<(), Error> {
    // The core, from the CPUID register's part number (QEMU's mps2-an386 is a Cortex-M4,
    // mps2-an500 a Cortex-M7; the same image runs on both).
    if let Some(peripherals) = cortex_m::Peripherals::take() {
        let part = (peripherals.CPUID.base.read() >> 4) & 0xfff;
        let core = match part {
            0xc24 => "cortex-m4",
            0xc27 => "cortex-m7",
            _ => "other",
        };
        hprintln!("whittle-firmware: cpu={} part={:#05x}", core, part);
    }
    let bundle = Bundle::parse(&BUNDLE.0)?;
    let mut session = Session::<_, CONTEXT>::new(&bundle, Portable, arena)?;
    let scores = session.label_scores(INPUT)?;
    let label = session.classify_scores(&scores)?;
    hprint!(
        "whittle-firmware: label={} name={} scores=",
        label.label_index,
        label.label
    );
    for (i, score) in scores.iter().enumerate() {
        let separator = if i == 0 { "" } else { "," };
        hprint!("{}{:08x}", separator, score.to_bits());
    }
    hprintln!();
    // Only the linker symbols' addresses are taken, never their contents.
    let address = |symbol: *const u8| symbol as usize;
    let data = address(&raw const __edata) - address(&raw const __sdata);
    let flash = address(&raw const __sidata) + data;
    let statics = address(&raw const __ebss) - address(&raw const __sdata);
    hprintln!(
        "whittle-firmware: flash={} bundle={} arena={} statics={} context={}",
        flash,
        BUNDLE.0.len(),
        ARENA_BYTES,
        statics,
        CONTEXT
    );
    Ok(())
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    hprintln!("whittle-firmware: HardFault at pc {:#010x}", frame.pc());
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("whittle-firmware: panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}

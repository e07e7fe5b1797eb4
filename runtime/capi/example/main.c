/* A C program on the whittle C API: checks the bundle linked into flash, sizes the arena,
   classifies one text and prints the label and the exact bits of the label scores, in the
   format the Rust firmware prints (so `cargo xtask test` compares both with the host runtime).
   Built and run by `cargo xtask test` (xtask/src/test.rs, `capi_under_qemu`); BUNDLE_PATH (a
   string literal holding a quoted path) and INPUT (a string literal) come from -D flags. */
#include <stddef.h>
#include <stdint.h>

#include "whittle.h"

void write_text(const char *text);

/* The bundle, 64-byte aligned in flash. */
__asm__(".section .rodata.bundle, \"a\"\n"
        ".balign 64\n"
        ".global bundle_start\n"
        "bundle_start:\n"
        ".incbin " BUNDLE_PATH "\n"
        ".global bundle_end\n"
        "bundle_end:\n"
        ".previous\n");
extern const uint8_t bundle_start[], bundle_end[];
extern uint32_t _sidata, _sdata, _edata, _ebss;

/* The arena, in RAM; main checks it against whittle_arena_bytes. */
#define ARENA_BYTES (96 * 1024)
static uint8_t arena[ARENA_BYTES] __attribute__((aligned(64)));

static const char input[] = INPUT;

/* Tokens of prompt and answer: the tiny test model's own context is 64. */
#define CONTEXT 64

static void write_number(size_t value) {
    char digits[24];
    size_t at = sizeof digits - 1;
    digits[at] = 0;
    do {
        digits[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    write_text(&digits[at]);
}

static void write_hex(uint32_t value) {
    char digits[9];
    for (int i = 0; i < 8; i++) digits[i] = "0123456789abcdef"[(value >> (28 - 4 * i)) & 0xF];
    digits[8] = 0;
    write_text(digits);
}

static int fail(const char *what, WhittleStatus status) {
    write_text("whittle-firmware: error: ");
    write_text(what);
    write_text(" returned status ");
    write_number((size_t)status);
    write_text("\n");
    return 1;
}

int main(void) {
    WhittleBundle bundle;
    WhittleStatus status =
        whittle_open(bundle_start, (size_t)(bundle_end - bundle_start), &bundle);
    if (status != WHITTLE_STATUS_OK) return fail("whittle_open", status);
    size_t needed = whittle_arena_bytes(&bundle, CONTEXT);
    if (needed == 0 || needed > ARENA_BYTES) {
        write_text("whittle-firmware: error: the arena needs ");
        write_number(needed);
        write_text(" bytes; raise ARENA_BYTES\n");
        return 1;
    }
    float scores[8];
    size_t label = 0;
    status = whittle_classify(&bundle, CONTEXT, arena, needed, (const uint8_t *)input,
                              sizeof input - 1, &label, scores, 8);
    if (status != WHITTLE_STATUS_OK) return fail("whittle_classify", status);
    const uint8_t *name = NULL;
    size_t name_len = 0;
    status = whittle_label_name(&bundle, label, &name, &name_len);
    if (status != WHITTLE_STATUS_OK) return fail("whittle_label_name", status);
    char name_text[64];
    size_t n = name_len < sizeof name_text - 1 ? name_len : sizeof name_text - 1;
    for (size_t i = 0; i < n; i++) name_text[i] = (char)name[i];
    name_text[n] = 0;

    write_text("whittle-firmware: label=");
    write_number(label);
    write_text(" name=");
    write_text(name_text);
    write_text(" scores=");
    size_t count = whittle_label_count(&bundle);
    for (size_t i = 0; i < count; i++) {
        union {
            float f;
            uint32_t bits;
        } score = {scores[i]};
        if (i > 0) write_text(",");
        write_hex(score.bits);
    }
    write_text("\nwhittle-firmware: flash=");
    write_number((size_t)&_sidata + (size_t)((uint8_t *)&_edata - (uint8_t *)&_sdata));
    write_text(" bundle=");
    write_number((size_t)(bundle_end - bundle_start));
    write_text(" arena=");
    write_number(needed);
    write_text(" statics=");
    write_number((size_t)((uint8_t *)&_ebss - (uint8_t *)&_sdata));
    write_text(" context=");
    write_number(CONTEXT);
    write_text("\n");
    return 0;
}

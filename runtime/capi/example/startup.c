/* Reset handler, vector table and semihosting for the C example on a Cortex-M4F under QEMU:
   no C library. Output goes out through semihosting SYS_WRITE0, the exit status through
   SYS_EXIT (QEMU exits with 0 for "application exit", 1 for anything else). */
#include <stddef.h>
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _stack_top;
int main(void);

static int semihost(int operation, const void *argument) {
    register int r0 __asm__("r0") = operation;
    register const void *r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void write_text(const char *text) { semihost(0x04, text); } /* SYS_WRITE0 */

__attribute__((noreturn)) void exit_with(int success) {
    /* SYS_EXIT: ADP_Stopped_ApplicationExit, or ADP_Stopped_RunTimeErrorUnknown. */
    semihost(0x18, (const void *)(uintptr_t)(success ? 0x20026 : 0x20023));
    for (;;) {
    }
}

/* What the Rust library's panic handler calls (it never should: the runtime does not panic). */
__attribute__((noreturn)) void abort(void) {
    write_text("whittle-firmware: abort\n");
    exit_with(0);
}

__attribute__((noreturn)) static void fault_handler(void) {
    write_text("whittle-firmware: HardFault\n");
    exit_with(0);
}

__attribute__((noreturn)) void reset_handler(void) {
    /* The FPU: the library is built for the hard-float ABI. */
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;
    __asm__ volatile("dsb\n isb");
    uint32_t *from = &_sidata, *to = &_sdata;
    while (to < &_edata) *to++ = *from++;
    for (to = &_sbss; to < &_ebss;) *to++ = 0;
    exit_with(main() == 0);
}

__attribute__((section(".vectors"), used)) static const void *const vectors[16] = {
    &_stack_top, reset_handler, fault_handler, fault_handler, fault_handler,
    fault_handler, fault_handler,
};

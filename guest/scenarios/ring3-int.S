// @description INT n from ring 3 (a DPL-3 gate) is a software interrupt, not a #UD, on every
// backend: on PVM KVM, whose emulator injects #UD for the INT it cannot run at CPL 3, the harness
// runs it again in the assist. Nothing processes INT 30h in the PM chain, so the run ends with the
// application fatal report, at the instruction after the INT (a trap).
// @expect-fault vector=30 error=0 eip=after_int
// @expect-exit unhandledFault
#include "harness.inc"
    .globl _start
_start:
    ENTER_RING3 user, RING3_STACK_TOP, 0x2
user:
    movl $0x3333, %eax
    int $0x30
after_int:
    jmp after_int

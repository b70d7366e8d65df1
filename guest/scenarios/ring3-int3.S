// @description INT3 from ring 3 (a DPL-3 gate) is #BP, a trap, on every backend (PVM KVM injects
// #UD for it; the harness runs it again in the assist).
// @expect-fault vector=03 error=0 eip=after_int3
// @expect-exit unhandledFault
#include "harness.inc"
    .globl _start
_start:
    ENTER_RING3 user, RING3_STACK_TOP, 0x2
user:
    int3
after_int3:
    jmp after_int3

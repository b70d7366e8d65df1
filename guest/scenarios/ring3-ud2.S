// @description A real #UD from ring 3 (UD2) stays a #UD on every backend: the re-run of a ring-3
// #UD on KVM (see ring3-int) gives the same fault back. Nothing processes it in the PM chain.
// @expect-fault vector=06 error=0 eip=fault
// @expect-exit unhandledFault
#include "harness.inc"
    .globl _start
_start:
    ENTER_RING3 user, RING3_STACK_TOP, 0x2
user:
fault:
    ud2
    jmp user

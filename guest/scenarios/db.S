// @description #DB: POPFD sets TF; the trap comes after the next instruction
// @expect-fault vector=01 error=0 eip=after_nop
#include "harness.inc"
    .globl _start
_start:
    pushfl
    orl $0x100, (%esp)
    popfl
    nop
after_nop:
    nop
    hlt

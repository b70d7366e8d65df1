// @description #GP with an error code: loading DS with selector 1234h (an LDT selector, no LDT)
// @expect-fault vector=0D error=1234 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movw $0x1234, %ax
fault:
    movw %ax, %ds
    hlt

// @description #NP: loading DS with a descriptor marked not present (selector 10h)
// @expect-fault vector=0B error=0010 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movw $SEL_NOT_PRESENT, %ax
fault:
    movw %ax, %ds
    hlt

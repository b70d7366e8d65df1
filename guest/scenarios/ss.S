// @description #SS: loading SS with a descriptor marked not present (selector 10h)
// @expect-fault vector=0C error=0010 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movw $SEL_NOT_PRESENT, %ax
fault:
    movw %ax, %ss
    hlt

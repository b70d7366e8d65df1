// @description #DE: DIV by zero faults at the DIV
// @expect-fault vector=00 error=0 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movl $1, %eax
    xorl %edx, %edx
    xorl %ecx, %ecx
fault:
    divl %ecx
    hlt

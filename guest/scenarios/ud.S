// @description #UD: UD2 faults at the UD2
// @expect-fault vector=06 error=0 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movl $0x600D, %eax
fault:
    ud2
    hlt

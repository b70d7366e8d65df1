// @description #BR: BOUND with an index outside [0, 3] faults at the BOUND
// @expect-fault vector=05 error=0 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movl $5, %eax
fault:
    bound %eax, bounds
    hlt
    .balign 4
bounds:
    .long 0, 3

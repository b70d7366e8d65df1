// @description #BP: INT3 is a trap, EIP after it
// @expect-fault vector=03 error=0 eip=after
#include "harness.inc"
    .globl _start
_start:
    int3
after:
    hlt

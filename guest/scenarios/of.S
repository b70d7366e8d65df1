// @description #OF: INTO with OF set is a trap, EIP after it
// @expect-fault vector=04 error=0 eip=after
#include "harness.inc"
    .globl _start
_start:
    movl $0x7FFFFFFF, %eax
    addl $1, %eax
    into
after:
    hlt

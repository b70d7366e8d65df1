// @description The host changes Client_EAX and Client_EIP in the #UD frame; the guest continues there
// @expect-fault vector=06 error=0 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movl $1, %eax
    movl $0xC0FFEE, %ebx
fault:
    ud2
skipped:
    movl $2, %eax          /* the host resumes at `resume`, so this never runs */
resume:
    hlt

// @description #AC: a misaligned load in ring 3 with CR0.AM and EFLAGS.AC set
// @needs alignment-check
// @expect-fault vector=11 error=0 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movl %cr0, %eax
    orl $0x40000, %eax      /* CR0.AM */
    movl %eax, %cr0
    ENTER_RING3 user, RING3_STACK_TOP, 0x40002   /* EFLAGS.AC, interrupts off */
user:
    movl $0x80001, %ebx
fault:
    movl (%ebx), %eax
    hlt

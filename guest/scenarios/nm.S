// @description #NM: an FPU instruction with CR0.TS set
// @expect-fault vector=07 error=0 eip=fault
#include "harness.inc"
    .globl _start
_start:
    movl %cr0, %eax
    orl $8, %eax            /* CR0.TS */
    movl %eax, %cr0
fault:
    fninit
    hlt

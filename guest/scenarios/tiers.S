// @description Three handlers in three tiers on one #DE: LATEOBS (hooked at Device_Init) runs first and
// passes on, then the VMM's own handler passes on, then CRITFIX (hooked during Sys_Critical_Init)
// processes it: it skips the DIV and sets Client_EAX to FA000000h.
// @devices late-observer critical-fixer
// @expect-fault vector=00 error=0 eip=fault
// @expect-exit halt
// @expect-reg eax=FA000000
#include "harness.inc"
    .globl _start
_start:
    movl $1, %eax
    xorl %edx, %edx
    xorl %ecx, %ecx
fault:
    divl %ecx
    hlt

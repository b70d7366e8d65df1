// @description An IRQ raised while IF = 0 stays pending at the virtual PIC and is taken once
// IF = 1, just after the instruction that follows STI (the STI shadow), as a CPU takes it: the
// IRQ 3 frame's EIP is the second INC. PICNMI's handler sets Client_EBX.
// @devices pic-nmi-demo
// @expect-fault vector=53 error=0 eip=second_inc
// @expect-exit halt
// @expect-reg eax=2 ebx=01A00003
#include "vmm.inc"
    .globl _start
_start:
    xorl %ebx, %ebx
    cli
    RAISE_IRQ 3
    xorl %eax, %eax
    sti
    incl %eax
second_inc:
    incl %eax
    cli
    hlt

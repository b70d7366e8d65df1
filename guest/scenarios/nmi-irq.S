// @description An NMI walks the NMI chain (PICNMI's handler passes on, the VMM's default ends the
// chain) and then the Hook_NMI_Event procedures; IRQ 3 raised at the virtual PIC arrives on vector
// 53h once IF is set and reaches the handler PICNMI virtualized. Hook_VMM_Fault refuses 53h.
// @devices pic-nmi-demo
// @expect-fault vector=02 error=0 eip=after_nmi
// @expect-fault vector=20
// @expect-fault vector=53 error=0 eip=after_irq
// @expect-exit halt
// @expect-reg eax=1 ebx=01A00003 ecx=00A00002
#include "vmm.inc"
    .globl _start
_start:
    xorl %ecx, %ecx
    RAISE_NMI
after_nmi:
    movl %ecx, %edx              /* the NMI event's Client_ECX */
    movl $0x53, %eax
    movl $handler, %esi
    VMMcall Hook_VMM_Fault       /* refused: 53h > 4Fh belongs to the virtual PIC */
    setc %al
    movzbl %al, %edi
    sti
    RAISE_IRQ 3
after_irq:
    cli
    movl %edx, %ecx
    movl %edi, %eax              /* 1: Hook_VMM_Fault set CF */
    hlt
handler:
    ret

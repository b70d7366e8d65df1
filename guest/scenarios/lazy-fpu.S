// @description Lazy FPU switching, the textbook Hook_VMM_Fault use: a guest device hooks #NM
// (07h) with a FaultProc that does CLTS and returns. The program sets CR0.TS and runs FNINIT:
// exactly one #NM, after which the FNINIT runs (the handler's CLTS persists: the VMM's IRET
// restores only what the frame holds) and the program halts. EBX = how often the handler ran.
// @expect-fault vector=20
// @expect-fault vector=07 error=0 eip=fault
// @expect-exit halt
// @expect-reg eax=600D ebx=1
#include "vmm.inc"
    .intel_syntax noprefix

    Declare_Virtual_Device LAZYFPU, 1, 0, LAZYFPU_Control, Undefined_Device_ID, Undefined_Init_Order

BeginProc LAZYFPU_Control
    cmp eax, Sys_Critical_Init
    jne control_done
    mov eax, 0x07
    mov esi, OFFSET32 NMFaultProc
    VMMcall Hook_VMM_Fault
    jc control_failed
control_done:
    clc
    ret
control_failed:
    stc
    ret
EndProc LAZYFPU_Control

/* The #NM handler: give the FPU to the faulting code and let the instruction run again. */
BeginProc NMFaultProc
    inc dword ptr [calls]
    clts
    ret
EndProc NMFaultProc

    .balign 4
calls:
    .long 0

    .globl _start
_start:
    mov eax, cr0
    or eax, 8               /* CR0.TS */
    mov cr0, eax
fault:
    fninit
    mov eax, 0x600D
    mov ebx, [calls]
    hlt

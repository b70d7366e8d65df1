// @description The DDK's Hook_VMM_Fault example, as written (Intel syntax): a guest device hooks
// #GP during Sys_Critical_Init, gets CF clear and ESI = the previous handler (none: 0), and its
// FaultProc is called on a real #GP, which it processes by skipping the faulting instruction.
// @expect-fault vector=20
// @expect-fault vector=0D error=1234 eip=expected_fault
// @expect-exit halt
// @expect-reg eax=600D
#include "vmm.inc"
    .intel_syntax noprefix

Interrupt = 0x0D                            /* #GP */

    Declare_Virtual_Device DDKDEMO, 1, 0, DDKDEMO_Control, Undefined_Device_ID, Undefined_Init_Order

BeginProc DDKDEMO_Control
    cmp eax, Sys_Critical_Init
    jne control_done

    /* ---- the DDK example ---- */
    mov eax, Interrupt  // interrupt number for fault
    mov esi, OFFSET32 FaultProc  // points to a fault handler
    VMMcall Hook_VMM_Fault
    jc not_installed  // carry flag set if not installed
    mov [Previous], esi  // points to previous fault handler (if any)
    /* -------------------------- */

control_done:
    clc
    ret
not_installed:
    stc
    ret
EndProc DDKDEMO_Control

/* The fault handler: EBX = VM handle, EBP -> the fault frame. A #GP at expected_fault is ours:
 * skip the 2-byte MOV DS, AX and report success in Client_EAX. Anything else goes to the
 * previous handler, with every register as received. */
BeginProc FaultProc
    cmp dword ptr [ebp + Client_EIP], OFFSET32 expected_fault
    jne chain
    add dword ptr [ebp + Client_EIP], 2
    mov dword ptr [ebp + Client_EAX], 0x600D
    ret
chain:
    cmp dword ptr [Previous], 0
    je no_previous
    jmp dword ptr [Previous]
no_previous:
    ret
EndProc FaultProc

    .balign 4
Previous:
    .long 0xFFFFFFFF  // overwritten by the hook's ESI

    .globl _start
_start:
    mov ax, 0x1234
expected_fault:
    mov ds, eax  // #GP(1234h): no LDT (8E D8, the 2 bytes FaultProc skips)
    hlt

// @description A fault inside a fault handler is re-entrant, as the VMM's frame is: a guest #UD
// handler divides by zero; the #DE handler (another device) processes that fault with its own
// frame on the #UD handler's stack, and the #UD handler then completes and processes the #UD.
// EAX = the #DE handler's quotient stand-in, EBX = 1 (the #UD handler ran to its end).
// @expect-fault vector=20
// @expect-fault vector=20
// @expect-fault vector=06 error=0 eip=fault
// @expect-fault vector=00 error=0 eip=div_in_handler
// @expect-exit halt
// @expect-reg eax=DE ebx=1
#include "vmm.inc"
    .intel_syntax noprefix

    Declare_Virtual_Device UDFIX, 1, 0, UDFIX_Control, Undefined_Device_ID, Undefined_Init_Order
    Declare_Virtual_Device DEFIX, 1, 0, DEFIX_Control, 0x7B10, Undefined_Init_Order

BeginProc UDFIX_Control
    cmp eax, Sys_Critical_Init
    jne 1f
    mov eax, 0x06
    mov esi, OFFSET32 UDFaultProc
    VMMcall Hook_VMM_Fault
1:
    clc
    ret
EndProc UDFIX_Control

BeginProc DEFIX_Control
    cmp eax, Sys_Critical_Init
    jne 1f
    mov eax, 0x00
    mov esi, OFFSET32 DEFaultProc
    VMMcall Hook_VMM_Fault
1:
    clc
    ret
EndProc DEFIX_Control

/* #UD: divide by zero on purpose, then skip the UD2 and report that it got here. */
BeginProc UDFaultProc
    push eax
    push ecx
    push edx
    xor edx, edx
    mov eax, 1
    xor ecx, ecx
div_in_handler:
    div ecx                     /* #DE inside the #UD handler (F7 F1) */
    mov [de_result], eax
    pop edx
    pop ecx
    pop eax
    add dword ptr [ebp + Client_EIP], 2
    mov dword ptr [ebp + Client_EBX], 1
    ret
EndProc UDFaultProc

/* #DE: skip the 2-byte DIV and give a result. */
BeginProc DEFaultProc
    add dword ptr [ebp + Client_EIP], 2
    mov dword ptr [ebp + Client_EAX], 0xDE
    ret
EndProc DEFaultProc

    .balign 4
de_result:
    .long 0

    .globl _start
_start:
    xor ebx, ebx
fault:
    ud2
    mov eax, [de_result]
    hlt

// @description A guest fault handler that processes #UD but returns with EBP changed: the VMM
// reports the register-rule violation with the handler's address and symbol (with --strict it
// ends the run, exit code 7).
// @expect-fault vector=20
// @expect-fault vector=06 error=0 eip=fault
// @expect-exit halt
#include "vmm.inc"
    .intel_syntax noprefix

    Declare_Virtual_Device BADEBP, 1, 0, BADEBP_Control, 0x7A03, Undefined_Init_Order

BeginProc BADEBP_Control
    cmp eax, Device_Init
    jne done
    mov eax, 0x06
    mov esi, OFFSET32 BadHandler
    VMMcall Hook_VMM_Fault
done:
    clc
    ret
EndProc BADEBP_Control

BeginProc BadHandler
    add dword ptr [ebp + Client_EIP], 2
    xor ebp, ebp                 // breaks the rule: EBP must be as on entry
    ret
EndProc BadHandler

    .globl _start
_start:
fault:
    ud2
    hlt

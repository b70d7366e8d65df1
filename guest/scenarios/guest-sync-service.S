// @description A guest fault handler that calls a synchronous service (Hook_VMM_Fault) while
// handling a fault: reported as the debug VMM did; the asynchronous Get_Cur_VM_Handle is not.
// @expect-fault vector=20
// @expect-fault vector=06 error=0 eip=fault
// @expect-fault vector=20
// @expect-fault vector=20
// @expect-exit halt
#include "vmm.inc"
    .intel_syntax noprefix

    Declare_Virtual_Device SYNCDEV, 1, 0, SYNCDEV_Control, 0x7A04, Undefined_Init_Order

BeginProc SYNCDEV_Control
    cmp eax, Device_Init
    jne done
    mov eax, 0x06
    mov esi, OFFSET32 Handler
    VMMcall Hook_VMM_Fault
done:
    clc
    ret
EndProc SYNCDEV_Control

BeginProc Handler
    push ebx
    push esi
    VMMcall Get_Cur_VM_Handle    // asynchronous: fine in a fault handler
    mov eax, 0x42
    mov esi, OFFSET32 Other
    VMMcall Hook_VMM_Fault       // synchronous: reported
    pop esi
    pop ebx
    add dword ptr [ebp + Client_EIP], 2
    ret
EndProc Handler

BeginProc Other
    ret
EndProc Other

    .globl _start
_start:
fault:
    ud2
    hlt

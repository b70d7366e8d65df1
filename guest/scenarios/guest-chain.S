// @description Three tiers from two guest devices and a Swift one, chaining guest -> Swift -> VMM -> guest:
// CRITDEV hooks #UD during Sys_Critical_Init, the VMM installs its own, the Swift LATEOBS and then
// INITDEV hook it at Device_Init. On the fault INITDEV's handler passes on by jumping to its previous
// handler (LATEOBS, a host address), LATEOBS passes on, the VMM passes on, and CRITDEV's handler
// processes it.
// @devices late-observer
// @expect-fault vector=20
// @expect-fault vector=20
// @expect-fault vector=06 error=0 eip=fault
// @expect-exit halt
// @expect-reg eax=C817
#include "vmm.inc"
    .intel_syntax noprefix

    Declare_Virtual_Device CRITDEV, 1, 0, CRITDEV_Control, 0x7A01, Undefined_Init_Order
    Declare_Virtual_Device INITDEV, 1, 0, INITDEV_Control, 0x7A02, Undefined_Init_Order

BeginProc CRITDEV_Control
    cmp eax, Sys_Critical_Init
    jne crit_done
    mov eax, 0x06
    mov esi, OFFSET32 CritFault
    VMMcall Hook_VMM_Fault
    jc crit_fail
    mov [CritPrev], esi
crit_done:
    clc
    ret
crit_fail:
    stc
    ret
EndProc CRITDEV_Control

BeginProc INITDEV_Control
    cmp eax, Device_Init
    jne init_done
    mov eax, 0x06
    mov esi, OFFSET32 InitFault
    VMMcall Hook_VMM_Fault
    jc init_fail
    mov [InitPrev], esi
init_done:
    clc
    ret
init_fail:
    stc
    ret
EndProc INITDEV_Control

// Processes the fault: skip the 2-byte UD2, leave a marker in Client_EAX.
BeginProc CritFault
    add dword ptr [ebp + Client_EIP], 2
    mov dword ptr [ebp + Client_EAX], 0xC817
    ret
EndProc CritFault

// Passes every fault on, registers untouched.
BeginProc InitFault
    jmp dword ptr [InitPrev]
EndProc InitFault

    .balign 4
CritPrev: .long 0
InitPrev: .long 0

    .globl _start
_start:
    mov eax, 1
fault:
    ud2
    hlt

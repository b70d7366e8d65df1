// @description One #UD in each mode, each reaching only its own chain: ring 0 -> Hook_VMM_Fault's,
// ring 3 -> Hook_PM_Fault's, V86 -> Hook_V86_Fault's. A guest device hooks all three. Ring-3 code
// asks for V86 with INT 30h (its PM handler rewrites the frame into V86 mode); V86 code returns
// to ring 0 with INT 31h (its V86 handler rewrites the frame back). Then an NMI and IRQ 3.
// @needs v86
// @devices pic-nmi-demo
// @expect-fault vector=20
// @expect-fault vector=20
// @expect-fault vector=20
// @expect-fault vector=20
// @expect-fault vector=20
// @expect-fault vector=06 error=0 eip=ring0_fault
// @expect-fault vector=06 error=0 eip=ring3_fault
// @expect-fault vector=30 error=0 eip=v86_code
// @expect-fault vector=06 error=0 eip=173
// @expect-fault vector=31 error=0
// @expect-fault vector=53 error=0
// @expect-fault vector=02 error=0
// @expect-exit halt
// @expect-reg eax=3 ebx=01A00003 ecx=00A00002
#include "vmm.inc"
    .intel_syntax noprefix

    Declare_Virtual_Device MODES, 1, 0, MODES_Control, 0x7A20, Undefined_Init_Order

.macro HOOK service, vector, handler
    mov eax, \vector
    mov esi, OFFSET \handler
    VMMcall \service
    jc fail
.endm

BeginProc MODES_Control
    cmp eax, Device_Init
    jne ok
    HOOK Hook_VMM_Fault, 0x06, VmmUD
    HOOK Hook_PM_Fault, 0x06, PmUD
    HOOK Hook_V86_Fault, 0x06, V86UD
    HOOK Hook_PM_Fault, 0x30, ToV86
    HOOK Hook_V86_Fault, 0x31, ToRing0
ok:
    clc
    ret
fail:
    stc
    ret
EndProc MODES_Control

// Each #UD handler skips the 2-byte UD2 and counts the mode in Client_EAX's bits.
BeginProc VmmUD
    add dword ptr [ebp + Client_EIP], 2
    ret
EndProc VmmUD
BeginProc PmUD
    add dword ptr [ebp + Client_EIP], 2
    ret
EndProc PmUD
BeginProc V86UD
    add word ptr [ebp + Client_IP], 2
    ret
EndProc V86UD

// INT 30h from ring 3: continue in V86 mode at FFFF:(v86_code - FFFF0h), IOPL 3.
BeginProc ToV86
    mov dword ptr [ebp + Client_EFlags], 0x23002
    mov dword ptr [ebp + Client_CS], 0xFFFF
    mov dword ptr [ebp + Client_EIP], OFFSET v86_code - 0xFFFF0
    mov dword ptr [ebp + Client_SS], 0x0700
    mov dword ptr [ebp + Client_ESP], 0x0FFE
    mov dword ptr [ebp + Client_DS], 0xFFFF
    mov dword ptr [ebp + Client_ES], 0xFFFF
    mov dword ptr [ebp + Client_FS], 0
    mov dword ptr [ebp + Client_GS], 0
    ret
EndProc ToV86

// INT 31h from V86: continue in ring 0 at back_in_ring0.
BeginProc ToRing0
    mov dword ptr [ebp + Client_EFlags], 0x2
    mov dword ptr [ebp + Client_CS], SEL_RING0_CODE
    mov dword ptr [ebp + Client_EIP], OFFSET back_in_ring0
    mov dword ptr [ebp + Client_SS], SEL_RING0_DATA
    mov dword ptr [ebp + Client_ESP], RING0_STACK_TOP
    mov dword ptr [ebp + Client_DS], SEL_RING0_DATA
    mov dword ptr [ebp + Client_ES], SEL_RING0_DATA
    mov dword ptr [ebp + Client_FS], SEL_RING0_DATA
    mov dword ptr [ebp + Client_GS], SEL_RING0_DATA
    ret
EndProc ToRing0

    .globl _start
_start:
    xor eax, eax
ring0_fault:
    ud2                          // -> VMM chain
    inc eax
    .att_syntax prefix
    ENTER_RING3 ring3_code, RING3_STACK_TOP, 0x2
    .intel_syntax noprefix
ring3_code:
ring3_fault:
    ud2                          // -> PM chain
    inc eax
    int 0x30                     // -> PM chain, vector 30h: continue in V86
v86_code:
    .code16
v86_fault:
    ud2                          // -> V86 chain
    .byte 0x66, 0x40             // inc eax (32-bit operand in 16-bit code)
    int 0x31                     // -> V86 chain, vector 31h: back to ring 0
    .code32
back_in_ring0:
    .att_syntax prefix
    sti
    RAISE_IRQ 3                  // vector 53h: PICNMI's virtualized IRQ 3 handler
    cli
    RAISE_NMI                    // NMI chain: PICNMI's handler passes on, the VMM's default ends it, PICNMI's event runs
    movl $3, %eax
    hlt

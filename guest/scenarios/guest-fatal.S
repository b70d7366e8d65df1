// @description An unhandled fault in guest device code: the fatal-exception report names the
// device (from its DDB) and the offset into its code.
// @expect-fault vector=0D error=1234 eip=bad_instruction
#include "vmm.inc"
    .intel_syntax noprefix

    Declare_Virtual_Device FAULTY, 1, 0, 0, 0x7A05, Undefined_Init_Order

    VxD_CODE_BEGIN FAULTY
BeginProc FAULTY_Service
    nop
    mov eax, 0x1234
bad_instruction:
    mov ds, eax                  // #GP(1234h): an LDT selector and no LDT
    ret
EndProc FAULTY_Service
    VxD_CODE_END FAULTY

    .globl _start
_start:
    call FAULTY_Service
    hlt

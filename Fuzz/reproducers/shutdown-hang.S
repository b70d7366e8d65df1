// @description Reproducer (found while building the Machine fuzz target, confirmed by hand): a
// guest device whose control procedure loops forever on System_Exit hangs `vmm-harness run`
// for good, whatever --timeout says, on both backends. The guest halts at once, so Machine.run()
// ends normally and cancels its watchdog; Harness.run then calls vmm.shutdown(), which calls the
// control procedure through Machine.callGuest, and that loop is bounded only by the watchdog.
//
//   timeout 30 vmm-harness run Fuzz/reproducers/shutdown-hang.S --backend interpreter --timeout 2
//   -> killed by timeout(1) after 30 s (rc 124); same with --backend kvm.
//
// Not under guest/scenarios on purpose: the suite runs every scenario there and would hang.
#include "vmm.inc"
    .intel_syntax noprefix
    Declare_Virtual_Device HANGX, 1, 0, HANGX_Control, Undefined_Device_ID, Undefined_Init_Order
BeginProc HANGX_Control
    cmp eax, System_Exit
    jne ok
spin:
    jmp spin
ok:
    clc
    ret
EndProc HANGX_Control
    .globl _start
_start:
    hlt

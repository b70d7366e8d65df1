// @description #PF with paging on: a guest device's Hook_VMM_Fault handler for 0Eh reads CR2,
// maps the missing 4 MiB page and returns; the faulting load runs again and succeeds.
// @needs paging
// @expect-fault vector=20
// @expect-fault vector=0E error=0 eip=fault
// @expect-exit halt
// @expect-reg eax=C0DEC0DE
#include "vmm.inc"
    .intel_syntax noprefix

    Declare_Virtual_Device PAGER, 1, 0, PAGER_Control, 0x7A30, Undefined_Init_Order

BeginProc PAGER_Control
    cmp eax, Device_Init
    jne done
    mov eax, 0x0E
    mov esi, OFFSET PageFault
    VMMcall Hook_VMM_Fault
    jc fail
    mov [Previous], esi
done:
    clc
    ret
fail:
    stc
    ret
EndProc PAGER_Control

// Maps the 4 MiB page that holds CR2 (identity) if it is the demand-paged window; else chains.
BeginProc PageFault
    push eax
    mov eax, cr2
    cmp eax, 0x00C00000
    jb not_ours
    cmp eax, 0x00FFFFFF
    ja not_ours
    mov dword ptr [page_directory + 3 * 4], 0x00C00083   // present, writable, 4 MiB page
    invlpg [eax]
    pop eax
    ret
not_ours:
    pop eax
    jmp dword ptr [Previous]
EndProc PageFault

    .balign 4
Previous: .long 0

    .globl _start
_start:
    // 4 MiB identity pages for 0-12 MiB; 12-16 MiB left not present.
    mov dword ptr [page_directory + 0], 0x00000083
    mov dword ptr [page_directory + 4], 0x00400083
    mov dword ptr [page_directory + 8], 0x00800083
    mov dword ptr [0x00C00100], 0              // (paging is still off: physical write)
    mov dword ptr [0x00C00100], 0xC0DEC0DE
    mov eax, OFFSET page_directory
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10                               // CR4.PSE
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000                         // CR0.PG
    mov cr0, eax
    xor eax, eax
fault:
    mov eax, dword ptr [0x00C00100]            // #PF: not present; the handler maps it
    hlt

    .balign 4096
page_directory:
    .fill 1024, 4, 0

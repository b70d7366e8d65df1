/*
 * VMMHarness guest runtime: the tables and IDT stubs every guest image runs on.
 *
 * Linked at 0000_1000h (MemoryMap.runtimeBase). Layout, fixed so that descriptors and gates can
 * be written as constants (ELF cannot relocate split descriptor fields):
 *   1000h  header   "VMMH", version, then base/limit of GDT, IDT, TSS, stub area
 *   1100h  GDT      8 descriptors (selectors in MemoryMap.swift, enum Selectors)
 *   1200h  IDT      60h interrupt gates: 00h-4Fh (exceptions, software interrupts) and
 *                    50h-5Fh (the virtual PIC's IRQ 0-15), each pointing at its stub
 *   1500h  TSS      32-bit TSS: SS0 = 30h, ESP0 = 0002_0000h, no I/O bitmap
 *   1600h  stubs    16 bytes per vector
 *
 * A stub turns every interrupt frame into one shape and exits to the host:
 *     pushl $0                 (only where the CPU pushes no error code)
 *     pushal                   (EDI at the lowest address ... EAX)
 *     outb  %al, $(80h + v)    (the port names the vector; the data byte is meaningless)
 * After it, ESP points at the DDK's "VMM re-entrant fault stack frame": Client_EDI..Client_EAX
 * (00h-1Fh), Client_Error (20h), then EIP, CS, EFLAGS (24h-2Fh) as the CPU pushed them, and for a
 * fault from ring 3 ESP and SS (30h-37h). The host completes the segment fields, runs the fault
 * through the VMM and resumes the guest by loading the (possibly changed) frame into the vCPU:
 * the guest never executes IRET, so the runtime works on hosts that cannot emulate it.
 * Control never returns to a stub; the HLT after the OUT is a guard.
 */
    .code32
    .text
    .globl _runtime_start
_runtime_start:

    .set RUNTIME_BASE, 0x1000
    .set GDT_ADDR,     0x1100
    .set IDT_ADDR,     0x1200
    .set TSS_ADDR,     0x1500
    .set STUB_ADDR,    0x1600
    .set STUB_SIZE,    16
    .set VECTORS,      0x60
    .set FAULT_PORT,   0x80
    .set RING0_CS,     0x28
    .set RING0_DS,     0x30
    .set RING0_FAULT_STACK_TOP, 0x1FFCC  /* 20000h - 34h: a ring-3 fault frame (38h bytes pushed) + segment fields ends at 20000h */

/* ---- header ------------------------------------------------------------------------------ */
header:
    .ascii "VMMH"
    .long 1                              /* layout version */
    .long GDT_ADDR, gdt_end - gdt - 1
    .long IDT_ADDR, VECTORS * 8 - 1
    .long TSS_ADDR, tss_end - tss - 1
    .long STUB_ADDR, STUB_SIZE
    .long VECTORS, FAULT_PORT

/* ---- GDT --------------------------------------------------------------------------------- */
    .org GDT_ADDR - RUNTIME_BASE, 0
gdt:
    .quad 0                              /* 00h null */
    .quad 0x0000890015000067             /* 08h TSS: base 1500h, limit 67h, 32-bit available */
    .quad 0x00CF13000000FFFF             /* 10h data, read/write, NOT present (#NP/#SS scenarios) */
    .quad 0x00CFFB000000FFFF             /* 18h ring-3 code, flat, 32-bit (selector 1Bh) */
    .quad 0x00CFF3000000FFFF             /* 20h ring-3 data, flat (selector 23h) */
    .quad 0x00CF9B000000FFFF             /* 28h ring-0 code, flat, 32-bit (as the Win9x VMM) */
    .quad 0x00CF93000000FFFF             /* 30h ring-0 data, flat */
    .quad 0                              /* 38h unused */
gdt_end:

/* ---- IDT --------------------------------------------------------------------------------- */
    .org IDT_ADDR - RUNTIME_BASE, 0
idt:
    .set v, 0
    .rept VECTORS
    .word (STUB_ADDR + v * STUB_SIZE) & 0xFFFF   /* offset 15:0 */
    .word RING0_CS
    /* 32-bit interrupt gate; DPL 3 for INT3, INTO and the software vectors 30h-4Fh so ring-3
       code may raise them, DPL 0 elsewhere (a ring-3 INT n there is a #GP, as on Windows; the
       IRQ vectors 50h-5Fh are reached only by the virtual PIC's delivery). */
    .if (v == 3) || (v == 4) || ((v >= 0x30) && (v < 0x50))
    .word 0xEE00
    .else
    .word 0x8E00
    .endif
    .word (STUB_ADDR + v * STUB_SIZE) >> 16      /* offset 31:16 */
    .set v, v + 1
    .endr

/* ---- TSS --------------------------------------------------------------------------------- */
    .org TSS_ADDR - RUNTIME_BASE, 0
tss:
    .long 0                              /* 00h previous task link */
    .long RING0_FAULT_STACK_TOP          /* 04h ESP0 */
    .long RING0_DS                       /* 08h SS0 */
    .fill 22, 4, 0                       /* 0Ch-63h: ESP1..LDT, unused */
    .word 0                              /* 64h T flag */
    .word 0x68                           /* 66h I/O map base = limit + 1: no bitmap */
tss_end:

/* ---- IDT stubs ----------------------------------------------------------------------------- */
    .org STUB_ADDR - RUNTIME_BASE, 0
stubs:
    .set v, 0
    .rept VECTORS
    .org STUB_ADDR - RUNTIME_BASE + v * STUB_SIZE, 0xF4
    /* The CPU pushes an error code for #DF, #TS, #NP, #SS, #GP, #PF and #AC. */
    .if (v != 8) && ((v < 0x0A) || (v > 0x0E)) && (v != 0x11)
    pushl $0
    .endif
    pushal
    outb %al, $(FAULT_PORT + v)
    hlt
    .set v, v + 1
    .endr
    .org STUB_ADDR - RUNTIME_BASE + VECTORS * STUB_SIZE, 0xF4
_runtime_end:

/* The fault benchmark's C floor; see include/cfaultfloor.h. */
#define _GNU_SOURCE
#include "cfaultfloor.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static char last_error[256];

static int fail(const char *what) {
    snprintf(last_error, sizeof last_error, "%s: %s (errno %d)", what, strerror(errno), errno);
    return -1;
}

const char *cfloor_last_error(void) { return last_error; }

enum {
    MEM_SIZE = 2 << 20,
    GDT = 0x1000,
    IDT = 0x2000,
    TSS = 0x3000,
    STUB = 0x4000,
    HALT_STUB = 0x4100,
    CODE = 0x10000,
    STACK_TOP = 0x80000,
    FAULT_PORT = 0x86, /* 80h + #UD */
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void put64(uint8_t *mem, uint32_t at, uint64_t v) { memcpy(mem + at, &v, 8); }
static uint32_t get32(const uint8_t *mem, uint32_t at) { uint32_t v; memcpy(&v, mem + at, 4); return v; }

static struct kvm_segment flat(uint16_t selector, uint8_t type) {
    struct kvm_segment s;
    memset(&s, 0, sizeof s);
    s.base = 0; s.limit = 0xFFFFFFFF; s.selector = selector; s.type = type;
    s.present = 1; s.dpl = 0; s.db = 1; s.s = 1; s.l = 0; s.g = 1;
    return s;
}

static void build_guest(uint8_t *mem, uint64_t count) {
    /* GDT: null, 08h ring-0 code, 10h ring-0 data, 18h busy 32-bit TSS at 3000h. */
    put64(mem, GDT + 0x00, 0);
    put64(mem, GDT + 0x08, 0x00CF9B000000FFFFull);
    put64(mem, GDT + 0x10, 0x00CF93000000FFFFull);
    put64(mem, GDT + 0x18, 0x00008B0030000067ull);
    /* IDT: 32 interrupt gates to a HLT stub, except #UD to the fault stub. */
    for (uint32_t v = 0; v < 32; v++) {
        uint32_t target = v == 6 ? STUB : HALT_STUB;
        uint64_t gate = (uint64_t)(target & 0xFFFF) | (uint64_t)0x08 << 16 | (uint64_t)0x8E00 << 32 |
                        (uint64_t)(target >> 16) << 48;
        put64(mem, IDT + v * 8, gate);
    }
    static const uint8_t stub[] = {0x6A, 0x00, 0x60, 0xE6, FAULT_PORT, 0xF4}; /* push 0; pushal; out; hlt */
    memcpy(mem + STUB, stub, sizeof stub);
    mem[HALT_STUB] = 0xF4;
    /* mov ecx, count; loop: ud2; dec ecx; jnz loop; hlt */
    uint8_t code[] = {0xB9, 0, 0, 0, 0, 0x0F, 0x0B, 0x49, 0x75, 0xFB, 0xF4};
    uint32_t c = (uint32_t)count;
    memcpy(code + 1, &c, 4);
    memcpy(mem + CODE, code, sizeof code);
}

int cfloor_run(const char *device, uint64_t warmup, uint64_t iterations, uint64_t *ns_samples,
               int *used_sync_regs) {
    int rc = -1, kvm = -1, vm = -1, vcpu = -1;
    uint8_t *mem = MAP_FAILED;
    struct kvm_run *run = MAP_FAILED;
    long run_size = 0;
    uint64_t total = warmup + iterations + 1;
    if (total > 0xFFFFFFFFull) { errno = EINVAL; return fail("iteration count"); }

    kvm = open(device ? device : "/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) { fail("open(/dev/kvm)"); goto out; }
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) { errno = EINVAL; fail("KVM_GET_API_VERSION"); goto out; }
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) { fail("ioctl(KVM_CREATE_VM)"); goto out; }
    mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) { fail("mmap(guest memory)"); goto out; }
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)(uintptr_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) { fail("ioctl(KVM_SET_USER_MEMORY_REGION)"); goto out; }
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) { fail("ioctl(KVM_CREATE_VCPU)"); goto out; }
    run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (long)sizeof(struct kvm_run)) { fail("ioctl(KVM_GET_VCPU_MMAP_SIZE)"); goto out; }
    run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) { fail("mmap(kvm_run)"); goto out; }

    build_guest(mem, total);

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) { fail("ioctl(KVM_GET_SREGS)"); goto out; }
    sregs.cs = flat(0x08, 0xB);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat(0x10, 0x3);
    memset(&sregs.tr, 0, sizeof sregs.tr);
    sregs.tr.base = TSS; sregs.tr.limit = 0x67; sregs.tr.selector = 0x18; sregs.tr.type = 0xB; sregs.tr.present = 1;
    memset(&sregs.ldt, 0, sizeof sregs.ldt);
    sregs.ldt.type = 0x2; sregs.ldt.present = 1; sregs.ldt.unusable = 1;
    sregs.gdt.base = GDT; sregs.gdt.limit = 0x1F;
    sregs.idt.base = IDT; sregs.idt.limit = 32 * 8 - 1;
    sregs.cr0 = 0x11; /* PE | ET */
    sregs.cr4 = 0; sregs.efer = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) { fail("ioctl(KVM_SET_SREGS)"); goto out; }
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = CODE; regs.rsp = STACK_TOP; regs.rflags = 0x2;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) { fail("ioctl(KVM_SET_REGS)"); goto out; }

    int sets = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
    int sync = sets > 0 && (sets & KVM_SYNC_X86_REGS) != 0;
    if (used_sync_regs) *used_sync_regs = sync;

    uint64_t faults = 0, previous = 0;
    for (;;) {
        if (sync) run->kvm_valid_regs = KVM_SYNC_X86_REGS;
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            fail("ioctl(KVM_RUN)");
            goto out;
        }
        uint64_t t = now_ns();
        if (run->exit_reason == KVM_EXIT_HLT) break;
        if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT || run->io.port != FAULT_PORT) {
            snprintf(last_error, sizeof last_error, "unexpected exit %u (port %u) after %llu faults",
                     run->exit_reason, run->exit_reason == KVM_EXIT_IO ? run->io.port : 0, (unsigned long long)faults);
            goto out;
        }
        if (faults > warmup) ns_samples[faults - warmup - 1] = t - previous;
        previous = t;
        faults++;
        struct kvm_regs *r = &regs;
        if (sync) {
            r = &run->s.regs.regs;
        } else if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0) {
            fail("ioctl(KVM_GET_REGS)");
            goto out;
        }
        uint32_t esp = (uint32_t)r->rsp;
        if (esp < 0x30 || esp > MEM_SIZE - 0x30) { snprintf(last_error, sizeof last_error, "ESP out of range"); goto out; }
        r->rip = get32(mem, esp + 0x24) + 2; /* past UD2 */
        r->rflags = get32(mem, esp + 0x2C);
        r->rsp = esp + 0x30; /* PUSHAD image, error code, EIP, CS, EFLAGS */
        if (sync) {
            run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
        } else if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) {
            fail("ioctl(KVM_SET_REGS)");
            goto out;
        }
    }
    if (faults != total) {
        snprintf(last_error, sizeof last_error, "the guest halted after %llu of %llu faults",
                 (unsigned long long)faults, (unsigned long long)total);
        goto out;
    }
    rc = 0;
out:
    if (rc != 0 && last_error[0] == 0) snprintf(last_error, sizeof last_error, "failed");
    if (run != MAP_FAILED) munmap(run, (size_t)run_size);
    if (vcpu >= 0) close(vcpu);
    if (mem != MAP_FAILED) munmap(mem, MEM_SIZE);
    if (vm >= 0) close(vm);
    if (kvm >= 0) close(kvm);
    return rc;
}

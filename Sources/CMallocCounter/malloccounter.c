/* See include/cmalloccounter.h. glibc only: other C libraries keep their allocator and the counter
 * reports itself inactive. */
#define _GNU_SOURCE
#include "cmalloccounter.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>

/* Under a sanitizer its own allocator must see every malloc and free: forwarding to glibc's would
 * hand ASan's blocks to glibc's free (a crash). The counter is then inactive. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define CMALLOC_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CMALLOC_SANITIZED 1
#endif

#if defined(__GLIBC__) && !defined(CMALLOC_SANITIZED)
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

static _Atomic uint64_t allocations;

static inline void count(void) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); }

void *malloc(size_t n) { count(); return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { count(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { count(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t alignment, size_t n) { count(); return __libc_memalign(alignment, n); }
void *aligned_alloc(size_t alignment, size_t n) { count(); return __libc_memalign(alignment, n); }
int posix_memalign(void **out, size_t alignment, size_t n) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    count();
    void *p = __libc_memalign(alignment, n);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}

uint64_t cmalloc_allocations(void) { return atomic_load_explicit(&allocations, memory_order_relaxed); }
#else
uint64_t cmalloc_allocations(void) { return 0; }
#endif

int cmalloc_active(void) {
    uint64_t before = cmalloc_allocations();
    void *volatile p = malloc(24);
    free(p);
    return cmalloc_allocations() != before;
}

// Force-included into every translation unit (setup.py: -include) so the kernel libraries need
// nothing newer than glibc 2.28 (manylinux_2_28) even when built on a newer system:
//  - log@GLIBC_2.29 (a faster variant, same results) and dlsym@GLIBC_2.34 (dlsym moved into
//    libc; the stable-ABI headers use it) are bound to their older versions;
//  - libstdc++ reads glibc 2.32's __libc_single_threaded to skip atomics in a single-threaded
//    process; a hidden stand-in that always says "not single-threaded" keeps the atomics.
#pragma once
#if defined(__linux__) && defined(__x86_64__) && !defined(__CUDA_ARCH__)
#include <features.h>
#if defined(__GLIBC__)
#ifdef __cplusplus
extern "C" {
#endif
__attribute__((weak, visibility("hidden"))) char ssir_fast_libc_single_threaded = 0;
#ifdef __cplusplus
}
#endif
#define __libc_single_threaded ssir_fast_libc_single_threaded
__asm__(".symver log,log@GLIBC_2.2.5");
__asm__(".symver dlsym,dlsym@GLIBC_2.2.5");
#endif
#endif

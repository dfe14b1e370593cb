// The physical-limit reference for cocomem's benchmarks: the model's hot paths written as
// plain C loops over the same data layout (the page table's dense entry array and the RMP's
// region index), so a Swift/C time ratio says how close the model is to the machine.
#ifndef CREFERENCE_H
#define CREFERENCE_H
#include <stddef.h>
#include <stdint.h>

/// Translates each address through the radix table (cocomem's Descriptor encoding: bit 62
/// leaf, bit 63 table, bits 16-55 frame or table number) and does the SNP host-write check
/// (a large leaf: the 2M region's assigned count; a 4K leaf: the page's own flag byte),
/// finding the region through the RMP's three index levels (512G, 1G, 2M). Returns a
/// checksum of the physical addresses and faults, so nothing is optimised away.
uint64_t cref_walk_check(const uint64_t *entries, int levels,
                         const int32_t *rmp_top, const int32_t *rmp_mid, const int32_t *rmp_codes,
                         const uint16_t *subpage_count, const uint8_t *rmp_flags,
                         const uint64_t *vas, size_t n);

/// Looks each address up in a 256-entry direct-mapped TLB laid out as SoftTLB's slots: pairs
/// of words (virtual page number, physical page base | level); returns a checksum.
uint64_t cref_tlb_lookup(const uint64_t *slots, const uint64_t *vas, size_t n);

#endif

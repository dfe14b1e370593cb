#include "creference.h"

#define LEAF_BIT (1ULL << 62)
#define TABLE_BIT (1ULL << 63)
#define FRAME_MASK ((1ULL << 40) - 1)

uint64_t cref_walk_check(const uint64_t *entries, int levels,
                         const int32_t *rmp_top, const int32_t *rmp_mid, const int32_t *rmp_codes,
                         const uint16_t *subpage_count, const uint8_t *rmp_flags,
                         const uint64_t *vas, size_t n) {
    uint64_t sum = 0;
    for (size_t k = 0; k < n; k++) {
        uint64_t va = vas[k];
        uint64_t table = 0, e = 0;
        int level = levels;
        for (; level >= 1; level--) {
            e = entries[table * 512 + ((va >> (12 + 9 * (level - 1))) & 511)];
            if (!(e & TABLE_BIT)) break;
            table = (e >> 16) & FRAME_MASK;
        }
        if (!(e & LEAF_BIT)) { sum += 1; continue; }
        uint64_t shift = 12 + 9 * (uint64_t)(level - 1);
        uint64_t pa = (((e >> 16) & FRAME_MASK) << 12) + (va & ((1ULL << shift) - 1));
        uint64_t region = pa >> 21;
        int32_t c = -1, t = rmp_top[region >> 18];
        if (t >= 0) {
            int32_t m = rmp_mid[((uint64_t)t << 9) | ((region >> 9) & 511)];
            if (m >= 0) c = rmp_codes[((uint64_t)m << 9) | (region & 511)];
        }
        if (c >= 0) c &= (1 << 30) - 1;  /* a chunk's code less its head-size bit */
        int fault;
        if (level >= 2) {
            fault = c >= 0 ? subpage_count[c] != 0 : c != -1;
        } else {
            fault = c == -1 ? 0 : c <= -2 ? 1 : (int)(rmp_flags[((uint64_t)c << 9) | ((pa >> 12) & 511)] & 1);
        }
        sum += pa ^ (uint64_t)fault;
    }
    return sum;
}

uint64_t cref_tlb_lookup(const uint64_t *slots, const uint64_t *vas, size_t n) {
    uint64_t sum = 0;
    for (size_t k = 0; k < n; k++) {
        uint64_t va = vas[k], vpn = va >> 12;
        const uint64_t *s = slots + 2 * (vpn & 255);
        sum += s[0] == vpn ? ((s[1] & ~4095ULL) | (va & 4095)) : 1;
    }
    return sum;
}

/* Estimated Cortex-M4 and Cortex-M7 cycles of one Thumb-2 instruction (ARMv7E-M), from its
 * encoding alone.  Included by insncount.c; see docs/cortex-m.md, "Estimated cycles".
 *
 * Cortex-M4: the cycle counts ARM publishes in the Cortex-M4 Technical Reference Manual
 * (ARM DDI 0439B, r0p1), Table 3-1 "Cortex-M4 instruction set summary" (integer, DSP,
 * load/store, branches) and Table 7-1 "FPU instruction set" (section 7.2.3):
 *   data processing, shifts, extends, bit fields, saturation, MOVW/MOVT      1
 *   MUL, MLA, MLS, long multiplies, DSP multiplies (SMLAD: two 16x16 MACs)   1
 *   SDIV/UDIV                                            2..12 (7 is taken here)
 *   LDR/STR single (B/H/SB/SH, imm/reg/literal)                                2
 *     (1 when it follows another load/store single: the TRM's note that
 *      neighbouring load and store single instructions pipeline)
 *   LDRD/STRD 1+N = 3; LDM/STM/PUSH/POP 1+N (N registers); LDREX/STREX 2
 *   B, BL, BX, BLX, CBZ/CBNZ, B<cond>: 1, plus P when taken (P: pipeline refill,
 *     "1 to 3"; 2 is taken here); TBB/TBH 2+P; POP {..., pc}, LDR pc: +P
 *   IT 1 (0 when folded onto a preceding 16-bit instruction)
 *   VADD/VSUB/VMUL/VNMUL/VABS/VNEG/VCMP/VCVT/VMOV/VMRS/VMSR                     1
 *   VMLA/VMLS/VNMLA/VNMLS, VFMA/VFMS/VFNMA/VFNMS                              3
 *   VDIV, VSQRT                                                              14
 *   VLDR/VSTR (.32) 2, (.64) 3; VLDM/VSTM/VPUSH/VPOP 1+N (N words); VMOV 2 x core <-> D/S 2
 *
 * Cortex-M7: ARM publishes no per-instruction cycle table for the M7 (its TRM, ARM DDI 0489,
 * describes a six-stage, dual-issue, in-order pipeline with branch prediction); the estimate
 * is coarser: one issue cycle per instruction; loads and stores single, LDRD/STRD 1 (a 64-bit
 * data bus, TCM or cache hit); LDM/STM 1+N/2; VDIV/VSQRT 14 (single precision), VMLA-class 3,
 * other FP 1; a taken branch 1 extra cycle (most are predicted); dual issue approximated by
 * letting the second of two neighbouring instructions of one translation block issue for free
 * when one is an integer ALU instruction and the other an ALU, load/store single, FP data or
 * branch instruction (no register dependencies are checked).
 *
 * Not modelled (both): flash wait states and prefetch, bus contention, data-dependent stalls
 * (register and FP result dependencies), conditional instructions that fail their condition,
 * SDIV/UDIV's operand-dependent time, interrupts; the taken-branch penalty is a constant.
 */
#ifndef TBN_CYCLES_H
#define TBN_CYCLES_H

#include <stdint.h>

enum tbn_insn_class {
    TBN_ALU,        /* integer data processing, shifts, extends, MOVW/MOVT, IT, hints */
    TBN_MUL,        /* 32-bit and DSP multiplies, multiply-accumulates */
    TBN_DIV,        /* SDIV, UDIV */
    TBN_LS,         /* load or store single */
    TBN_LS_DUAL,    /* LDRD, STRD */
    TBN_LS_MULTI,   /* LDM, STM, PUSH, POP */
    TBN_BRANCH,     /* B, BL, BX, BLX, CBZ, CBNZ, TBB, TBH, POP/LDM/LDR to pc, MOV/ADD pc */
    TBN_FP,         /* FP single-cycle data processing and register transfers */
    TBN_FP_MAC,     /* VMLA/VMLS/VNMLA/VNMLS/VFMA/VFMS/VFNMA/VFNMS */
    TBN_FP_DIV,     /* VDIV, VSQRT */
    TBN_FP_LS,      /* VLDR, VSTR */
    TBN_FP_MULTI,   /* VLDM, VSTM, VPUSH, VPOP */
    TBN_FP_MOV2,    /* VMOV between two core registers and a D register or two S registers */
    TBN_IT,         /* IT */
    TBN_N_CLASSES
};

struct tbn_insn {
    enum tbn_insn_class cls;
    unsigned words;    /* registers (LS_MULTI) or words (FP_MULTI) moved; 8 for a .64 VLDR/VSTR */
    int is_branch;     /* may change the pc: its taken penalty is added when it is taken */
    int wide;          /* a 32-bit instruction */
};

static unsigned tbn_popcount16(uint32_t v)
{
    unsigned n = 0;
    for (v &= 0xFFFFu; v; v &= v - 1) n++;
    return n;
}

/* Classify the instruction whose first halfword is hw1 and second (for a 32-bit one) hw2. */
static struct tbn_insn tbn_decode(uint32_t hw1, uint32_t hw2)
{
    struct tbn_insn r = {TBN_ALU, 0, 0, 0};
    uint32_t top5 = hw1 >> 11;
    if (top5 == 0x1D || top5 == 0x1E || top5 == 0x1F) { /* 32-bit */
        r.wide = 1;
        uint32_t op1 = (hw1 >> 11) & 3, op2 = (hw1 >> 4) & 0x7F;
        if (op1 == 1) {
            if ((op2 & 0x64) == 0x00) { /* load/store multiple */
                int load = (hw1 >> 4) & 1;
                r.cls = TBN_LS_MULTI;
                r.words = tbn_popcount16(hw2);
                if (load && (hw2 & 0x8000u)) r.is_branch = 1;
            } else if ((op2 & 0x64) == 0x04) { /* dual, exclusive, table branch */
                if ((hw1 & 0xFFF0u) == 0xE8D0u && (hw2 & 0xFFE0u) == 0xF000u) {
                    r.cls = TBN_BRANCH; /* TBB, TBH */
                    r.words = 1;
                    r.is_branch = 1;
                } else if ((hw1 & 0xFFE0u) == 0xE840u || ((hw1 & 0xFFE0u) == 0xE8C0u && ((hw2 >> 6) & 3) == 1)) {
                    r.cls = TBN_LS; /* LDREX/STREX (and their byte/halfword forms) */
                } else {
                    r.cls = TBN_LS_DUAL;
                }
            } else if ((op2 & 0x60) == 0x20) {
                r.cls = TBN_ALU; /* data processing (shifted register) */
            } else {                  /* coprocessor: the FPU */
                goto coproc;
            }
        } else if (op1 == 2) {
            if (!(hw2 & 0x8000u)) {
                r.cls = TBN_ALU; /* data processing (immediate) */
            } else {
                uint32_t o2 = (hw2 >> 12) & 7;
                if ((o2 & 5) == 0) { /* B<cond> T3, or MSR/MRS/hints/barriers */
                    if (((hw1 >> 7) & 7) != 7) {
                        r.cls = TBN_BRANCH;
                        r.is_branch = 1;
                    } else {
                        r.cls = TBN_ALU;
                    }
                } else { /* B T4, BL */
                    r.cls = TBN_BRANCH;
                    r.is_branch = 1;
                }
            }
        } else { /* op1 == 3 */
            if ((op2 & 0x71) == 0x00) {
                r.cls = TBN_LS; /* store single */
            } else if ((op2 & 0x67) == 0x01 || (op2 & 0x67) == 0x03 || (op2 & 0x67) == 0x05) {
                r.cls = TBN_LS; /* load byte / halfword / word */
                if ((op2 & 0x67) == 0x05 && ((hw2 >> 12) & 0xF) == 0xF) r.is_branch = 1; /* LDR pc */
            } else if ((op2 & 0x70) == 0x20) {
                r.cls = TBN_ALU; /* data processing (register), parallel add/sub, misc */
            } else if ((op2 & 0x78) == 0x30) {
                r.cls = TBN_MUL; /* multiply, multiply-accumulate, DSP multiplies */
            } else if ((op2 & 0x78) == 0x38) {
                uint32_t o = (hw1 >> 4) & 7;
                if ((o == 1 || o == 3) && ((hw2 >> 4) & 0xF) == 0xF) r.cls = TBN_DIV;
                else r.cls = TBN_MUL; /* long multiplies and multiply-accumulates */
            } else if (op2 & 0x40) {
                goto coproc;
            }
        }
        return r;
    coproc:
        if (((hw2 >> 9) & 7) != 5) { /* not coprocessor 10/11: no FPU operation */
            r.cls = TBN_ALU;
            return r;
        }
        if ((hw1 & 0xEF00u) == 0xEC00u || (hw1 & 0xEF00u) == 0xED00u) { /* ECxx, EDxx */
            if ((hw1 & 0xFFE0u) == 0xEC40u) { /* 64-bit transfers */
                r.cls = TBN_FP_MOV2;
            } else if ((hw1 & 0x0120u) == 0x0100u) { /* P=1, W=0: VLDR, VSTR */
                r.cls = TBN_FP_LS;
                r.words = (hw2 & 0x100u) ? 2 : 1;
            } else {
                r.cls = TBN_FP_MULTI;
                r.words = hw2 & 0xFFu;
            }
            return r;
        }
        if ((hw1 & 0xFF00u) == 0xEE00u) {
            if (hw2 & 0x10u) {
                r.cls = TBN_FP; /* VMOV core <-> S, VMRS, VMSR */
                return r;
            }
            uint32_t opc1 = (hw1 >> 4) & 0xB, opc2 = hw1 & 0xF, opc3 = (hw2 >> 6) & 3;
            if (opc1 == 0x0 || opc1 == 0x1 || opc1 == 0x9 || opc1 == 0xA) r.cls = TBN_FP_MAC;
            else if (opc1 == 0x8) r.cls = TBN_FP_DIV;
            else if (opc1 == 0xB && opc2 == 0x1 && opc3 == 0x3) r.cls = TBN_FP_DIV; /* VSQRT */
            else r.cls = TBN_FP;
            return r;
        }
        r.cls = TBN_ALU;
        return r;
    }
    /* 16-bit */
    uint32_t op = hw1 >> 10;
    if ((hw1 >> 14) == 0) return r; /* shift, add, subtract, move, compare */
    if (op == 0x10) {
        r.cls = (((hw1 >> 6) & 0xF) == 0xD) ? TBN_MUL : TBN_ALU; /* data processing, MUL */
        return r;
    }
    if (op == 0x11) { /* special data, BX, BLX */
        uint32_t o = (hw1 >> 8) & 3;
        if (o == 3) {
            r.cls = TBN_BRANCH;
            r.is_branch = 1;
        } else if (o != 1 && (((hw1 >> 4) & 8) | (hw1 & 7)) == 15) { /* ADD/MOV to pc */
            r.cls = TBN_BRANCH;
            r.is_branch = 1;
        }
        return r;
    }
    if ((hw1 >> 11) == 0x09 || (hw1 >> 12) == 0x5 || (hw1 >> 13) == 0x3 || (hw1 >> 12) == 0x8 ||
        (hw1 >> 12) == 0x9) {
        r.cls = TBN_LS;
        return r;
    }
    if ((hw1 >> 12) == 0xA) return r; /* ADR, ADD sp */
    if ((hw1 >> 12) == 0xB) { /* miscellaneous */
        if ((hw1 & 0x0500u) == 0x0100u) { /* CBZ, CBNZ */
            r.cls = TBN_BRANCH;
            r.is_branch = 1;
        } else if ((hw1 & 0x0E00u) == 0x0400u) { /* PUSH */
            r.cls = TBN_LS_MULTI;
            r.words = tbn_popcount16(hw1 & 0xFFu) + ((hw1 >> 8) & 1);
        } else if ((hw1 & 0x0E00u) == 0x0C00u) { /* POP */
            r.cls = TBN_LS_MULTI;
            r.words = tbn_popcount16(hw1 & 0xFFu) + ((hw1 >> 8) & 1);
            if (hw1 & 0x100u) r.is_branch = 1;
        } else if ((hw1 & 0x0F00u) == 0x0F00u && (hw1 & 0xFu)) {
            r.cls = TBN_IT;
        }
        return r;
    }
    if ((hw1 >> 12) == 0xC) { /* LDM, STM */
        r.cls = TBN_LS_MULTI;
        r.words = tbn_popcount16(hw1 & 0xFFu);
        return r;
    }
    if ((hw1 >> 12) == 0xD) { /* B<cond>, UDF, SVC */
        if (((hw1 >> 9) & 7) != 7) {
            r.cls = TBN_BRANCH;
            r.is_branch = 1;
        }
        return r;
    }
    if ((hw1 >> 11) == 0x1C) { /* B */
        r.cls = TBN_BRANCH;
        r.is_branch = 1;
    }
    return r;
}

/* Taken-branch penalties (added when the next instruction executed is not the next in memory). */
#define TBN_M4_TAKEN 2 /* P of the Cortex-M4 TRM, "1 to 3" */
#define TBN_M7_TAKEN 1

/* Cortex-M4 cycles of the instruction, before a taken-branch penalty; prev: the instruction
 * before it in the same translation block (NULL: none). */
static unsigned tbn_cycles_m4(const struct tbn_insn *in, const struct tbn_insn *prev)
{
    switch (in->cls) {
    case TBN_ALU: return 1;
    case TBN_MUL: return 1;
    case TBN_DIV: return 7;
    case TBN_LS: return (prev && prev->cls == TBN_LS) ? 1 : 2;
    case TBN_LS_DUAL: return 3;
    case TBN_LS_MULTI: return 1 + in->words;
    case TBN_BRANCH: return in->words ? 2 : 1; /* TBB/TBH: 2 */
    case TBN_FP: return 1;
    case TBN_FP_MAC: return 3;
    case TBN_FP_DIV: return 14;
    case TBN_FP_LS: return in->words == 2 ? 3 : 2;
    case TBN_FP_MULTI: return 1 + in->words;
    case TBN_FP_MOV2: return 2;
    case TBN_IT: return (prev && !prev->wide) ? 0 : 1;
    default: return 1;
    }
}

static int tbn_m7_pairs(const struct tbn_insn *a, const struct tbn_insn *b)
{
    int a_alu = a->cls == TBN_ALU, b_alu = b->cls == TBN_ALU;
    int other = b->cls == TBN_ALU || b->cls == TBN_LS || b->cls == TBN_FP || b->cls == TBN_BRANCH;
    int other_a = a->cls == TBN_LS || a->cls == TBN_FP;
    return (a_alu && other) || (b_alu && other_a);
}

/* Cortex-M7 cycles (see the header); *paired says whether prev already took a pair. */
static unsigned tbn_cycles_m7(const struct tbn_insn *in, const struct tbn_insn *prev, int *paired)
{
    if (prev && !*paired && tbn_m7_pairs(prev, in)) {
        *paired = 1;
        return 0;
    }
    *paired = 0;
    switch (in->cls) {
    case TBN_DIV: return 7;
    case TBN_LS_MULTI: return 1 + (in->words + 1) / 2;
    case TBN_BRANCH: return in->words ? 2 : 1;
    case TBN_FP_MAC: return 3;
    case TBN_FP_DIV: return 14;
    case TBN_FP_MULTI: return 1 + (in->words + 1) / 2;
    default: return 1;
    }
}

#endif

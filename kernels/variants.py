"""Every compiled kernel variant, in one table: the ISAs (compiler flags, lanes, registers, the
modules each gets), the float32 blocks and N-tiles with the register-fit rule, and the int8
blocks with their N-tiles. setup.py loads this file by path and hands the computed lists to the
templates; it is part of the kernel hashes (setup.KERNEL_SOURCES).
"""
import collections

ISA = collections.namedtuple("ISA", "flags lanes registers n_tiles modules")

_AVX512 = ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"]
#: name: compiler flags, float32 vector lanes, vector registers, fp32 N-tile widths (in vectors),
#: and the modules built for it ("spmm" float32, "spmm_int8", "encoder"), best ISA last
ISAS = {
    "generic": ISA([], 4, 16, (1, 2, 4, 8), ("spmm", "encoder")),
    "avx2": ISA(["-mavx2", "-mfma"], 8, 16, (1, 2, 3, 4, 6, 8), ("spmm", "encoder")),
    "avx512": ISA(_AVX512, 16, 32, (1, 2, 3, 4, 6, 8), ("spmm", "encoder")),
    # u8 x s8 -> s32 dot products (vpdpbusd): the int8 SpMM, and the encoder ops with int8 attention
    "avx512vnni": ISA(_AVX512 + ["-mavx512vnni"], 16, 32, (), ("spmm_int8", "encoder")),
}
FP32_BLOCKS = [(1, 1), (1, 4), (4, 1), (4, 4), (8, 1), (16, 1)]
#: blocks that also get dense variants (every block stored, X rows follow from the block number):
#: the dense GEMM of our own kernels, W packed as panels of 4 or 8 rows
DENSE_BLOCKS = [(4, 1), (8, 1)]
#: int8 blocks and their N-tile widths (columns); the rows layout's tiles take a whole 64-column
#: chunk (4x1 at 64), half of one (32) or a quarter (16): the taller blocks so that BR x NT/16
#: accumulators fit, 4x1 and 8x1 also for a few tokens (dispatch picks the narrowest that covers N)
INT8_TILES = {(4, 1): (16, 32, 64), (8, 1): (16, 32), (16, 1): (16,), (4, 4): (16, 32, 64), (1, 4): (16, 32, 64, 128)}
#: outputs a token-major store writes per token at once (a 64-byte line of float32): the
#: register tiles of TOKEN_ROWS / BR block rows fill a scratch tile before going into Y
TOKEN_ROWS = 16
#: trailing index entries (blocks or groups) every indices array carries for the prefetcher
PREFETCH_PAD = 64


def isas_with(module):
    """The ISAs `module` is built for."""
    return [name for name, isa in ISAS.items() if module in isa.modules]


def fp32_variants(isa):
    """(BR, BC, J, RB, NT, DENSE) of each float32 variant: block BR x BC, N-tile NT = J vectors,
    RB register rows. RB is the tallest divisor of BR (down to min(BR, 4)) whose RB*J accumulators
    + J operands + 1 broadcast fit in the register file; a (block, J) with none is left out. The
    block-sparse variants come first (their ids are their positions), then the dense ones."""
    lanes, registers, choices = ISAS[isa].lanes, ISAS[isa].registers, ISAS[isa].n_tiles
    variants = []
    for dense, blocks in ((0, FP32_BLOCKS), (1, DENSE_BLOCKS)):
        for br, bc in blocks:
            for j in choices:
                rb = br
                while rb > 0 and (br % rb or rb * j + j + 1 > registers):
                    rb -= 1
                if rb >= min(br, 4):
                    variants.append((br, bc, j, rb, j * lanes, dense))
    return variants


def int8_variants():
    """(BR, BC, NT) of each int8 variant."""
    return [(br, bc, nt) for (br, bc), tiles in INT8_TILES.items() for nt in tiles]

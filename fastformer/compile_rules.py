"""What a compiled kernel config is held to, and the hardware fact compiling needs: plain rules on
the records :mod:`fastformer.compile_report` makes (no Triton import here, so the command line
can load them before it decides whether Triton's interpreter is on).

A record breaks the rules with a compile error, spills in a kernel held to none, shared memory
over the per-block limit, a matrix kernel without tensor-core instructions, or a large-tile one
without wgmma where the architecture has it.
"""

from __future__ import annotations

WARP_SIZE = 32  # threads per warp on every NVIDIA architecture


def problems(record: dict) -> list[str]:
    """What a record breaks: a compile error, spills in a kernel held to none, shared memory
    over the per-block limit, a matrix kernel without tensor-core instructions, a large-tile
    one without wgmma where the architecture has it."""
    if record["error"]:
        return [f"does not compile: {record['error']}"]
    found = []
    if record["spill_free"] and (
        record["spill_stores"] or record["spill_loads"] or record["local"]
    ):
        found.append(
            f"spills {record['spill_stores']} B stored, {record['spill_loads']} B loaded"
            + (f", {record['local']} B local" if record["local"] else "")
        )
    shared = record["shared"] + record["static_shared"]
    if shared > record["smem_limit"]:
        found.append(f"shared memory {shared} B > {record['smem_limit']} B a block")
    if record["matmul"] and not (record["mma"] or record["wgmma"]):
        found.append("no tensor-core instruction (mma, wgmma)")
    if record["wgmma_expected"] and not record["wgmma"]:
        found.append("no wgmma on a tile large enough for it")
    return found
